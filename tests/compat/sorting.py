import sys


def numbers(seed, n, scale):
    out = []
    for _ in range(n):
        seed = (seed * 1103515245 + 12345) % 2147483648
        out.append(seed % scale - scale // 2)
    return out


def fingerprint(values):
    # Not hash(): str hashes differ between processes.
    return sum(i * sum(ord(c) * j for j, c in enumerate(repr(v), 1)) for i, v in enumerate(values, 1)) % 1000000007


def stable(values, key, reverse):
    tagged = [(v, i) for i, v in enumerate(values)]
    ordered = sorted(tagged, key=lambda t: key(t[0]), reverse=reverse)
    return [i for _, i in ordered]


def main(x):
    small = numbers(7, 3000, 1000)
    big = [v * 2**70 + v for v in numbers(11, 2000, 10**6)]
    mixed = numbers(13, 1500, 2**40) + [v * 2**64 for v in numbers(17, 1500, 2**20)] + [0, -1, 2**63, -(2**63), 2**63 - 1]
    floats = [v / 7.0 for v in numbers(19, 2000, 10**5)] + [float("inf"), -float("inf"), -0.0, 0.0]
    strs = ["%x" % (v * 2654435761 % 2**32) for v in numbers(23, 2000, 10**6)] + ["é", "z", "", "zé", "ß"] + x
    # The same objects, many times over: a sort must leave each one's count as it found it.
    shared = [object() for _ in range(3)]
    ints = [10**30 + v for v in range(3)]
    pool = [ints[v % 3] for v in numbers(29, 900, 100)]
    before = [sys.getrefcount(o) for o in ints + shared]
    pool.sort()
    again = sorted(pool, reverse=True)
    keyed = sorted(shared * 50, key=lambda o: shared.index(o))
    del again, keyed
    after = [sys.getrefcount(o) for o in ints + shared]
    return {
        "small": [fingerprint(sorted(small)), fingerprint(sorted(small, reverse=True)), sorted(small)[:5]],
        "big": [fingerprint(sorted(big)), sorted(big)[-1], sorted(big, reverse=True)[-1]],
        "mixed": [fingerprint(sorted(mixed)), sorted(mixed)[:3], sorted(mixed)[-3:]],
        "floats": [fingerprint(sorted(floats)), [repr(v) for v in sorted(floats)[:2] + sorted(floats)[-2:]]],
        "strs": [fingerprint(sorted(strs)), sorted(strs)[:3], sorted(strs)[-3:]],
        "stable": [
            stable(small[:500], lambda v: v % 10, False)[:40],
            stable(small[:500], lambda v: v % 10, True)[:40],
            stable(strs[:300], len, False)[:40],
        ],
        "keyed": [fingerprint(sorted(big, key=lambda v: -v)), fingerprint(sorted(floats, key=abs))],
        "counts_kept": [b - a for b, a in zip(before, after)],
        "pool": [pool.count(ints[0]), pool[0] == ints[0], pool[-1] == ints[2]],
    }
