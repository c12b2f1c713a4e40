# attack: call libc's system through ctypes
# expect: wasm=task_error seccomp=ok:nonzero docker=ok:nonzero
# canary: /tmp/lattice-attack-ctypes-{tier}
def f(x):
    import ctypes
    return ctypes.CDLL(None).system(b"echo escaped > /tmp/lattice-attack-ctypes-{tier}")
