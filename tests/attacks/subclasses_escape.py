# attack: walk object.__subclasses__() to reach os functions and run a command
# expect: wasm=task_error seccomp=task_error:RuntimeError docker=ok|task_error:RuntimeError
# (docker: a shell inside the container may run; the canary is on the host)
# canary: /tmp/lattice-attack-subclasses-{tier}
def f(x):
    for cls in object.__subclasses__():
        init = getattr(cls, "__init__", None)
        g = getattr(init, "__globals__", None)
        if g and "system" in g:
            if g["system"]("echo escaped > /tmp/lattice-attack-subclasses-{tier}") == 0:
                return "ran"
        if g and "os" in g and hasattr(g["os"], "system"):
            if g["os"].system("echo escaped > /tmp/lattice-attack-subclasses-{tier}") == 0:
                return "ran"
    raise RuntimeError("no way found")
