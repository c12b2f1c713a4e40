# attack: look through gc, and every module, for another task's data
# (a victim task held a secret just before this one, and another holds one
# while it runs, on the same executor)
# victim: yes
# forbid: lattice-victim-secret-
# expect: *=ok:[]
import gc, sys

def f(x):
    # Built at run time, so that this file's own constants don't match.
    needle = "lattice-victim-" + "secret-"
    found = []

    def look(value):
        if isinstance(value, str) and value.startswith(needle) and value != needle:
            found.append(value)

    for obj in gc.get_objects():
        try:
            if isinstance(obj, dict):
                for key, value in list(obj.items()):
                    look(key)
                    look(value)
            elif isinstance(obj, (list, tuple, set, frozenset)):
                for value in list(obj):
                    look(value)
            else:
                look(obj)
        except Exception:
            pass
    for module in list(sys.modules.values()):
        for value in list(getattr(module, "__dict__", {}).values()):
            look(value)
    return found
