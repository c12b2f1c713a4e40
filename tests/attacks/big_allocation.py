# attack: one allocation far beyond the memory limit
# expect: *=memory_limit
def f(x):
    return len(bytearray(8 << 30))
