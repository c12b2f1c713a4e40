from collections import deque
from typing import List


def sieve(n: int) -> List[int]:
    flags = [True] * (n + 1)
    flags[0] = flags[1] = False
    for i in range(2, int(n ** 0.5) + 1):
        if flags[i]:
            flags[i * i :: i] = [False] * len(flags[i * i :: i])
    return [i for i, f in enumerate(flags) if f]


def bfs(grid, start, goal):
    rows, cols = len(grid), len(grid[0])
    seen = {start}
    queue = deque([(start, 0)])
    while queue:
        (r, c), dist = queue.popleft()
        if (r, c) == goal:
            return dist
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            nr, nc = r + dr, c + dc
            if 0 <= nr < rows and 0 <= nc < cols and grid[nr][nc] == "." and (nr, nc) not in seen:
                seen.add((nr, nc))
                queue.append(((nr, nc), dist + 1))
    return -1


def lcs(a, b):
    dp = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, ca in enumerate(a):
        for j, cb in enumerate(b):
            dp[i + 1][j + 1] = dp[i][j] + 1 if ca == cb else max(dp[i][j + 1], dp[i + 1][j])
    return dp[-1][-1]


def quicksort(xs):
    if len(xs) <= 1:
        return xs
    pivot, *rest = xs
    return quicksort([x for x in rest if x < pivot]) + [pivot] + quicksort([x for x in rest if x >= pivot])


def main(data):
    grid = ["....#", ".##.#", "...#.", "#...."]
    return {
        "primes": sieve(100)[-5:],
        "bfs": bfs(grid, (0, 0), (3, 4)),
        "lcs": lcs("AGGTAB", "GXTXAYB"),
        "quicksort": quicksort([5, 3, 8, 1, 9, 2, 7]),
        "sorted_big": sorted(range(100000, 0, -1))[:3],
        "matrix": [[sum(a * b for a, b in zip(row, col)) for col in zip(*[[1, 2], [3, 4]])] for row in [[5, 6], [7, 8]]],
        "data": sorted(data),
    }
