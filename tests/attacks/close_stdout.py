# attack: close and redirect stdout before returning
# expect: *=ok:"closed"
import os, sys, io
def f(x):
    sys.stdout.close()
    sys.stdout = io.StringIO()
    try:
        os.close(1)
    except OSError:
        pass
    return "closed"
