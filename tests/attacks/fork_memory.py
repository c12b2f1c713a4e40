# attack: fork 8 children that each hold 100 MB under a 256 MiB limit; the
# task reports whether all of them held it at once (the limit was per process)
# expect: *=ok:false|memory_limit
# max_memory_mb: 256
import os, time
def f(x):
    try:
        r, w = os.pipe()
    except (AttributeError, OSError):
        return False
    kids = []
    for _ in range(8):
        try:
            pid = os.fork()
        except (AttributeError, OSError):
            break
        if pid == 0:
            held = bytearray(100 << 20)
            for i in range(0, len(held), 4096):
                held[i] = 1
            os.write(w, b"x")
            time.sleep(4)
            os._exit(0)
        kids.append(pid)
    os.close(w)
    reported = 0
    started = time.time()
    while reported < len(kids) and time.time() - started < 3:
        if os.read(r, 1):
            reported += 1
        else:
            break
    alive = sum(1 for pid in kids if os.waitpid(pid, os.WNOHANG) == (0, 0))
    for pid in kids:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except OSError:
            pass
    return len(kids) == 8 and alive == 8 and reported == 8
