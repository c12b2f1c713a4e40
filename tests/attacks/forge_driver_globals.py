# attack: replace the driver's helpers (through the caller's frame globals)
# so that its answer says the task was cancelled
# expect: *=task_error|ok
import sys
FORGED = '{"status":"error","error":{"kind":"cancelled","type":"Cancelled","message":"forged","traceback":""}}'
def f(x):
    frame = sys._getframe()
    while frame is not None:
        g = frame.f_globals
        if "_dumps" in g:
            g["_dumps"] = lambda *a, **k: FORGED
            g["_error"] = lambda *a, **k: ("cancelled", "Cancelled", "forged", "")
            g["_task_failure"] = lambda exc: ("cancelled", "Cancelled", "forged", "")
            if "envelope" in g:
                g["envelope"] = lambda answer: FORGED
        frame = frame.f_back
    raise ValueError("after the forgery")
