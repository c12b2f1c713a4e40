# attack: an integer with a hundred million digits
# expect: *=limit
def f(x):
    return 10 ** 10 ** 8 % 7
