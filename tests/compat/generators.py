import functools
import itertools
import operator


def fib():
    a, b = 0, 1
    while True:
        yield a
        a, b = b, a + b


def counter():
    count = 0

    def inc(step=1):
        nonlocal count
        count += step
        return count

    return inc


def memo(f):
    cache = {}

    @functools.wraps(f)
    def wrapper(n):
        if n not in cache:
            cache[n] = f(n)
        return cache[n]

    return wrapper


@memo
def ways(n):
    return 1 if n <= 1 else ways(n - 1) + ways(n - 2)


def main(x):
    inc = counter()
    inc()
    inc(5)
    gen = (i * i for i in range(10) if i % 2)
    return {
        "fib": list(itertools.islice(fib(), 15)),
        "counter": inc(),
        "gen": list(gen),
        "ways": ways(80),
        "wrapped": ways.__name__,
        "reduce": functools.reduce(operator.mul, range(1, 15)),
        "groupby": [(k, len(list(g))) for k, g in itertools.groupby("aaabccdddd")],
        "product": ["".join(p) for p in itertools.product("ab", repeat=2)],
        "perms": len(list(itertools.permutations(range(5)))),
        "accumulate": list(itertools.accumulate([1, 2, 3, 4])),
        "dict_comp": {k: v for k, v in zip("abc", range(3))},
        "set_comp": sorted({c.upper() for c in "hello"}),
        "lambda_sort": sorted(["bb", "a", "ccc"], key=lambda s: -len(s)),
        "partial": functools.partial(int, base=2)("1011"),
        "lru": functools.lru_cache(maxsize=None)(lambda n: n * 2)(21),
    }
