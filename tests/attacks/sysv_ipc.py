# attack: leave a System V shared memory segment and message queue behind
# (key 0x1a77ac1d), and look for one another task left
# expect: wasm=task_error seccomp=task_error *=ok:"clean"
# ipc-key: 0x1a77ac1d
import ctypes
KEY = 0x1a77ac1d
def f(x):
    libc = ctypes.CDLL(None, use_errno=True)
    found = libc.shmget(KEY, 0, 0) >= 0 or libc.msgget(KEY, 0) >= 0
    shm = libc.shmget(KEY, 1 << 20, 0o1666)
    queue = libc.msgget(KEY, 0o1666)
    if shm < 0 or queue < 0:
        raise OSError(ctypes.get_errno(), "shmget/msgget refused")
    return "found another task's" if found else "clean"
