# attack: an input nested 100,000 lists deep (the test builds it)
# expect: *=invalid_task
def f(x):
    return "accepted"
