# A task called with positional and keyword arguments:
#   lattice-wasm run examples/solve.py --args '[1, 2]' --kwargs '{"k": 3}' --entry solve
def solve(a, b, k=1):
    return {"sum": a + b, "scaled": (a + b) * k}


def unused():
    return "the entry is named, so this last def is not called"
