# attack: a fork bomb (children sleep, so they pile up)
# expect: wasm=task_error subprocess=ok seccomp=ok:"stopped-after-0" docker=ok
import os, time
def f(x):
    n = 0
    try:
        for _ in range(100000):
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            n += 1
    except OSError:
        return "stopped-after-%d" % n
    return "unbounded"
