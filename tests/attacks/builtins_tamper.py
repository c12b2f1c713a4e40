# attack: tamper with __builtins__ so the driver's checks misbehave
# expect: *=ok:"unharmed"
import builtins
def f(x):
    builtins.isinstance = lambda *a: True
    builtins.len = lambda *a: 0
    return "unharmed"
