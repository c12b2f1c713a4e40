# attack: a result nested 100,000 lists deep
# expect: *=task_error
def f(x):
    out = []
    for _ in range(100000):
        out = [out]
    return out
