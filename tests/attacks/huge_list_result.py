# attack: a result of 8 million zeros (24 MB of JSON that decodes 30 times larger)
# expect: *=task_error:ResultTooLarge
def f(x):
    return [0] * (8 << 20)
