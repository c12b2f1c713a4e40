# attack: raise MemoryError without using any memory, to pass for the memory limit
# expect: *=task_error:MemoryError
def f(x):
    raise MemoryError("forged: out of memory")
