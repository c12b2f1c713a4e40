# attack: check that a setuid program could raise the task's privileges (no_new_privs off)
# expect: wasm=task_error seccomp=task_error *=ok:"1"
def f(x):
    for line in open("/proc/self/status"):
        if line.startswith("NoNewPrivs:"):
            return line.split()[1]
    return "unknown"
