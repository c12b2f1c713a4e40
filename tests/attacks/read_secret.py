# attack: read a secret file the host made, readable only by its owner (the path is the input)
# expect: wasm=task_error subprocess=task_error seccomp=task_error docker=task_error
# forbid: lattice-top-secret
def f(path):
    return open(path).read()
