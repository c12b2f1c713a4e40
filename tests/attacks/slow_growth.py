# attack: memory that grows a megabyte at a time until something gives
# expect: *=memory_limit
def f(x):
    kept = []
    while True:
        kept.append(bytearray(1 << 20))
