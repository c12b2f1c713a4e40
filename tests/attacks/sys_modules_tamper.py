# attack: replace json in sys.modules so the driver's encoding is ours
# expect: *=ok:"honest"
import sys, types
def f(x):
    fake = types.ModuleType("json")
    fake.dumps = lambda *a, **k: '"hijacked"'
    fake.loads = lambda *a, **k: None
    sys.modules["json"] = fake
    return "honest"
