"""Ray's own paths, for the Ray executor's bench (tests/it/ray_executor.rs,
`bench_against_plain_ray_remote`), on the same cluster:

    python benches/ray_baseline.py ADDRESS exec BINARY TASK_JSON ROUNDS PIPELINED
        the seed's path: a plain Python driver calling `ray.remote` for the
        same work (each task runs `lattice-wasm exec` with the task's JSON)
    python benches/ray_baseline.py ADDRESS noop ROUNDS PIPELINED
        Ray's own per-task floor: a no-op Python function, `num_cpus=1`

Prints one JSON line: {"rtt_ms": [...], "pipelined_s": seconds}.
"""
import json
import subprocess
import sys
import time

import ray

address, mode = sys.argv[1:3]
ray.init(address=address, log_to_driver=False, logging_level="ERROR")

if mode == "exec":
    binary, task = sys.argv[3:5]
    rounds, pipelined = int(sys.argv[5]), int(sys.argv[6])

    @ray.remote(num_cpus=1, max_retries=0)
    def run(task_json):
        done = subprocess.run([binary, "exec"], input=task_json.encode(), capture_output=True)
        return done.stdout.decode()

    def check(line):
        assert '"status":"ok"' in line, line

else:
    rounds, pipelined = int(sys.argv[3]), int(sys.argv[4])
    task = 1

    @ray.remote(num_cpus=1, max_retries=0)
    def run(x):
        return x

    def check(value):
        assert value == 1, value


# Warm the workers of every node.
for result in ray.get([run.remote(task) for _ in range(6)]):
    check(result)
rtts = []
for _ in range(rounds):
    start = time.perf_counter()
    ray.get(run.remote(task))
    rtts.append((time.perf_counter() - start) * 1e3)
start = time.perf_counter()
results = ray.get([run.remote(task) for _ in range(pipelined)])
elapsed = time.perf_counter() - start
for result in results:
    check(result)
print(json.dumps({"rtt_ms": rtts, "pipelined_s": elapsed}))
ray.shutdown()
