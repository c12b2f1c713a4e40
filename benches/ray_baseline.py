"""The seed's path, for the Ray executor's bench: a plain Python driver that
calls `ray.remote` for the same work (each task runs `lattice-wasm exec`
with the task's JSON on its node, exactly as the executor's tasks do).

    python benches/ray_baseline.py ADDRESS BINARY TASK_JSON ROUNDS PIPELINED

Prints one JSON line: {"rtt_ms": [...], "pipelined_s": seconds}.
Run by tests/ray_executor.rs's `bench_against_plain_ray_remote`.
"""
import json
import subprocess
import sys
import time

import ray

address, binary, task, rounds, pipelined = sys.argv[1:6]
rounds, pipelined = int(rounds), int(pipelined)
ray.init(address=address, log_to_driver=False, logging_level="ERROR")


@ray.remote(num_cpus=1, max_retries=0)
def run(task_json):
    done = subprocess.run([binary, "exec"], input=task_json.encode(), capture_output=True)
    return done.stdout.decode()


# Warm the workers of every node.
for line in ray.get([run.remote(task) for _ in range(6)]):
    assert '"status":"ok"' in line, line
rtts = []
for _ in range(rounds):
    start = time.perf_counter()
    ray.get(run.remote(task))
    rtts.append((time.perf_counter() - start) * 1e3)
start = time.perf_counter()
results = ray.get([run.remote(task) for _ in range(pipelined)])
elapsed = time.perf_counter() - start
assert all('"status":"ok"' in r for r in results)
print(json.dumps({"rtt_ms": rtts, "pipelined_s": elapsed}))
ray.shutdown()
