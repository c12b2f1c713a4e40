# attack: os.system a command that would leave a mark on the host
# expect: wasm=task_error seccomp=ok:nonzero docker=ok:nonzero
# canary: /tmp/lattice-attack-system-{tier}
import os
def f(x):
    return os.system("echo escaped > /tmp/lattice-attack-system-{tier}")
