# attack: spin forever
# expect: *=timeout
def f(x):
    while True:
        pass
