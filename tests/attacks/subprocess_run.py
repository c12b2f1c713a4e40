# attack: run a shell command through subprocess
# expect: wasm=task_error seccomp=task_error docker=task_error
import subprocess
def f(x):
    return subprocess.run(["cat", "/etc/hostname"], capture_output=True).stdout.decode()
