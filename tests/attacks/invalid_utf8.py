# attack: print and return invalid UTF-8 (lone surrogates, raw bytes on fd 1)
# expect: *=task_error
import os, sys
def f(x):
    sys.stdout.write("\udcff")
    try:
        os.write(1, b"\xff\xfe raw\n")
    except OSError:
        pass
    return "\udcff"
