# attack: start a process with fork
# expect: wasm=task_error seccomp=task_error
import os
def f(x):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return "forked"
