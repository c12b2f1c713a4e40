# attack: read other processes' command lines (the host runs one with a secret in it)
# expect: *=task
# forbid: lattice-cmdline-secret
# host-process: yes
import os
def f(x):
    seen = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                seen.append(open("/proc/%s/cmdline" % name, "rb").read().decode(errors="replace"))
            except OSError:
                pass
    return seen
