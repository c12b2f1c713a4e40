# attack: write a forged envelope (a timeout) on the driver's result channel, fd 3, and exit
# expect: *=task_error
import os
FORGED = b'{"status":"error","error":{"kind":"timeout","type":"WallTimeout","message":"forged","traceback":""}}'
def f(x):
    try:
        os.write(3, FORGED)
    except OSError:
        raise ValueError("no fd 3 here")
    os._exit(0)
