# attack: hit the memory limit, catch the MemoryError, and return a result
# that mentions it: a task that recovers has its result
# expect: wasm=ok:"MemoryError" *=ok:"MemoryError"|memory_limit
def f(x):
    kept = []
    try:
        while True:
            kept.append(bytearray(1 << 20))
    except MemoryError:
        kept = None
    return "MemoryError"
