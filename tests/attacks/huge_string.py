# attack: a string of a trillion characters
# expect: *=memory_limit
def f(x):
    return len("a" * 10 ** 12)
