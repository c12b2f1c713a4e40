# attack: raise an exception whose message is 100 MB
# expect: *=task_error:ValueError|limit
def f(x):
    raise ValueError("x" * (100 << 20))
