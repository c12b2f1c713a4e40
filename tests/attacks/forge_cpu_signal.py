# attack: send itself SIGXCPU, the CPU-time limit's signal, without using the CPU
# expect: *=task
import os, signal
def f(x):
    os.kill(os.getpid(), signal.SIGXCPU)
    return "alive"
