# attack: exit with 152 (128 + SIGXCPU), which a container reports as its exit
# code, to pass for the CPU-time limit
# expect: *=task_error
import os
def f(x):
    os._exit(152)
