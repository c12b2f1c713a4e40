# attack: recurse without end
# expect: *=task_error:RecursionError
def f(x):
    def down(n):
        return down(n + 1) + 1
    return down(0)
