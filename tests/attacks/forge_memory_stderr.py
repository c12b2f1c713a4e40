# attack: print a MemoryError traceback to stderr and exit 1, to pass for the memory limit
# expect: *=task_error
import os, sys
def f(x):
    sys.stderr.write("Traceback (most recent call last):\n  File \"x\", line 1\nMemoryError\n")
    sys.stderr.flush()
    os._exit(1)
