# attack: an integer with a hundred million digits
# expect: *=limit
# timeout: 3
def f(x):
    return 10 ** 10 ** 8 % 7
