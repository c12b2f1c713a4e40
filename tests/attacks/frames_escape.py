# attack: climb the stack frames into the driver and replace its encoder
# expect: *=ok
# (in-process Python can't be fenced from itself: a task may change its own
# result this way, and only that, as each task has a fresh interpreter)
import sys
def f(x):
    frame = sys._getframe()
    while frame.f_back is not None:
        frame = frame.f_back
        for name in ("_loads", "_dumps"):
            if name in frame.f_globals:
                frame.f_globals[name] = lambda *a, **k: '"hijacked"'
    return "tried"
