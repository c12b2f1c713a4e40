# attack: raise the error a 32-bit interpreter gives for a size beyond its
# address space, to pass for the memory limit
# expect: *=task_error:OverflowError
def f(x):
    raise OverflowError("cannot fit 'int' into an index-sized integer")
