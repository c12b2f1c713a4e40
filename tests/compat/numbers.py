import cmath
import math
from decimal import Decimal, getcontext
from fractions import Fraction
import statistics


def int_edges():
    """Arithmetic and comparisons around the int fast paths' bounds (the
    compact range 2**30, i32 for `*`, i64 and a one-limb magnitude), in
    three rounds of a loop the interpreter specialises: CPython's rounds
    are all alike, so a specialised path that differs shows in a later
    round."""
    edges = [0, 1, -1, 2**30 - 1, -(2**30 - 1), 2**30, -(2**30), 2**31 - 1, -(2**31), 2**31, -(2**31) - 1, 2**32, 2**62, -(2**62), 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64 - 1, -(2**64 - 1), 2**64, -(2**64), 2**100, -(2**100)]
    rounds = []
    for _ in range(3):
        total = 0
        order = 0
        for i, a in enumerate(edges):
            for j, b in enumerate(edges):
                total += (a + b) * (i + 1) - (a - b) * (j + 1) + a * b % 1000003
                if b:
                    total += a // b + a % b
                order = order * 3 % 1000003 + (a < b) + 2 * (a == b) + 4 * (a >= b)
        rounds.append([total, order])
    return rounds


def main(x):
    getcontext().prec = 30
    return {
        "math": [math.gcd(84, 36), math.factorial(25), math.isqrt(10**20 + 1), round(math.pi, 10), math.comb(30, 12), math.floor(-2.5), math.ceil(2.1), math.hypot(3, 4), math.log2(1024), round(math.exp(1), 12)],
        "cmath": [round(cmath.sqrt(-4).imag, 9), round(abs(cmath.exp(1j * math.pi) + 1), 9)],
        "bigint": [2**200, (3**100) % 1000007, -(7**50) // 13, pow(3, 10**6, 10**9 + 7), int("9" * 50) + 1],
        "floats": [0.1 + 0.2, 1e300 * 10 == float("inf"), round(2.675, 2), divmod(-7, 2), 7 % -3, float("1e-5")],
        "decimal": [str(Decimal(1) / Decimal(7)), str(Decimal("1.10") + Decimal("2.20")), str(Decimal("2").sqrt())],
        "fraction": [str(Fraction(3, 4) + Fraction(1, 6)), str(Fraction("0.125")), float(Fraction(1, 3))],
        "statistics": [statistics.mean([1, 2, 3, 4]), statistics.median([5, 1, 3]), round(statistics.stdev([2, 4, 4, 4, 5, 5, 7, 9]), 9), statistics.mode([1, 1, 2])],
        "int_edges": int_edges(),
        "bool_int": [True + True, int(True), bool(0), 10 // 3, -10 // 3, abs(-5), max([3, 9, 2]), sum(range(101))],
    }
