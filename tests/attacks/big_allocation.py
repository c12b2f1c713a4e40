# attack: one allocation far beyond the memory limit
# expect: wasm=task_error:OverflowError *=memory_limit
# (8 GiB is beyond the 32-bit Wasm address space: an OverflowError before any allocation)
def f(x):
    return len(bytearray(8 << 30))
