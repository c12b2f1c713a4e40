# A program (script mode): reads n on stdin, prints 1..n and their sum.
n = int(input())
for i in range(1, n + 1):
    print(i)
print("sum", n * (n + 1) // 2)
