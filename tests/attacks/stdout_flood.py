# attack: print 5 MB
# expect: *=ok
# stdout: truncated
def f(x):
    line = "x" * 1000
    for _ in range(5000):
        print(line)
    return "done"
