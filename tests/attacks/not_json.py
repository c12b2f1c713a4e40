# attack: a result that is not JSON
# expect: *=task_error
def f(x):
    return {1, 2, 3}
