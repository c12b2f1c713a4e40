# attack: spin forever
# expect: *=timeout
# timeout: 3
def f(x):
    while True:
        pass
