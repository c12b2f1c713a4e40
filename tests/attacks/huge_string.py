# attack: a string of a trillion characters
# expect: *=task_error:MemoryError|task_error:OverflowError|memory_limit
# (a size no address space here can hold fails before allocating: MemoryError on
# CPython, OverflowError on 32-bit Wasm; the host saw no limit fire, so it is the
# task's own error)
def f(x):
    return len("a" * 10 ** 12)
