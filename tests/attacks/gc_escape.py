# attack: find the driver's objects through gc and read other tasks' data
# expect: *=ok
def f(x):
    import gc
    return len(gc.get_objects()) >= 0
