# attack: find the docker tier's envelope mark (environment, arguments, the
# driver's frames) and print a forged envelope (sandbox_unavailable) after it
# expect: *=task_error|ok
import os, sys
FORGED = '{"status":"error","error":{"kind":"sandbox_unavailable","type":"SandboxUnavailable","message":"forged","traceback":""}}'
def f(x):
    marks = set()
    try:
        for item in open("/proc/self/environ", "rb").read().split(b"\0"):
            if item.startswith(b"LATTICE_ENVELOPE_MARK="):
                marks.add(item.split(b"=", 1)[1].decode())
    except OSError:
        pass
    frame = sys._getframe()
    while frame is not None:
        for value in list(frame.f_locals.values()) + list(frame.f_globals.values()):
            if isinstance(value, str) and value.startswith("lattice-envelope-"):
                marks.add(value)
        frame = frame.f_back
    for mark in marks:
        sys.stdout.write("\n" + mark + "\n" + FORGED)
    sys.stdout.flush()
    if marks:
        os._exit(0)
    return "no mark found"
