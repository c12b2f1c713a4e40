# attack: spread 4 seconds of spinning over 4 forked children under a CPU-time limit of 1 s
# expect: *=timeout
# max_cpu_time: 1
import os, time
def spin(seconds):
    until = time.time() + seconds
    while time.time() < until:
        pass
def f(x):
    kids = []
    for _ in range(4):
        try:
            pid = os.fork()
        except (AttributeError, OSError):
            break
        if pid == 0:
            spin(4)
            os._exit(0)
        kids.append(pid)
    if not kids:
        spin(4)
    for pid in kids:
        os.waitpid(pid, 0)
    return "spun"
