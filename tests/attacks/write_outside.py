# attack: write a file outside the sandbox (the host checks it does not appear)
# expect: wasm=task_error seccomp=task_error subprocess=ok docker=ok
# (subprocess and docker: the write lands in the task's own /tmp)
# canary: /tmp/lattice-attack-canary-{tier}
def f(x):
    with open("/tmp/lattice-attack-canary-{tier}", "w") as out:
        out.write("escaped")
    return "written"
