# attack: a 100 MB result
# expect: *=refused
def f(x):
    return "x" * (100 << 20)
