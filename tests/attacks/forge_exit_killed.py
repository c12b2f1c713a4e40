# attack: exit with 137 (128 + SIGKILL), to pass for a container stopped from outside
# expect: *=task_error
import os
def f(x):
    os._exit(137)
