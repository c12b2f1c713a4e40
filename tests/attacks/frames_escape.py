# attack: climb the stack frames, and every thread's frames, looking for
# another task's data (a victim task held a secret just before this one,
# and another holds one while it runs, on the same executor)
# victim: yes
# forbid: lattice-victim-secret-
# expect: *=ok:[]
import sys

def f(x):
    needle = "lattice-victim-" + "secret-"
    found = []

    def look(namespace):
        for value in list(namespace.values()):
            if isinstance(value, str) and value.startswith(needle) and value != needle:
                found.append(value)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    if isinstance(item, str) and item.startswith(needle) and item != needle:
                        found.append(item)

    frames = [sys._getframe()]
    current = getattr(sys, "_current_frames", None)
    if current is not None:
        try:
            frames.extend(current().values())
        except Exception:
            pass
    for frame in frames:
        while frame is not None:
            look(frame.f_locals)
            look(frame.f_globals)
            frame = frame.f_back
    return found
