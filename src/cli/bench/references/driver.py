"""Runs a Python package's sandbox for `lattice-wasm bench` and times it from inside Python.

The harness starts `python -c <a package part + this file> CONCURRENCY`. The
package part (monty.py, eryx.py, cpython.py beside this file) defines:
  VERSION                      the package's version
  pools(concurrency)           a context manager giving (sequential_pool, concurrent_pool)
  source(code)                 the workload's code made ready to run (once per workload)
  call(pool, source, case)     one task: ("value", result) or ("raised", exception type name)

Protocol, JSON lines:
  -> {"op": "load", "code": ..., "cases": [{"input": ..., "expect": {"value": ...} | {"raises": "ValueError"}}]}
  <- {"ok": true}
  -> {"op": "run", "first": 0, "count": 10, "concurrent": false}
  <- {"latencies_ms": [...]}  (one task at a time)   or   {"wall_s": 1.2}  (CONCURRENCY at a time)
Any reply may instead be {"mismatch": "..."} (a wrong answer) or {"error": "..."}.

Task i runs the workload on case i % len(cases); the answer is checked
against the expected one after the clock stops.
"""

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def reply(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def check(task, case, outcome):
    """None if the outcome is the expected one, else what was wrong."""
    kind, got = outcome
    expect = case["expect"]
    if kind == "value":
        # Tuples and other JSON-able values compare as their JSON form.
        got = json.loads(json.dumps(got))
        if "value" in expect and got == expect["value"]:
            return None
        got = "result " + json.dumps(got)[:160]
    else:
        if expect.get("raises") == got:
            return None
        got = "raised " + got
    return f"task {task}: expected {json.dumps(expect)[:160]}, got {got}"


class Runner:
    def __init__(self, sequential_pool, concurrent_pool, threads):
        self.sequential_pool = sequential_pool
        self.concurrent_pool = concurrent_pool
        self.threads = threads
        self.source = None
        self.cases = None

    def load(self, request):
        self.source = source(request["code"])
        self.cases = request["cases"]
        return {"ok": True}

    def case(self, task):
        return self.cases[task % len(self.cases)]

    def run(self, request):
        tasks = range(request["first"], request["first"] + request["count"])
        if request["concurrent"]:
            return self.run_concurrent(tasks)
        return self.run_sequential(tasks)

    def run_sequential(self, tasks):
        latencies, outcomes = [], []
        for task in tasks:
            started = time.perf_counter()
            outcomes.append(call(self.sequential_pool, self.source, self.case(task)))
            latencies.append((time.perf_counter() - started) * 1000)
        return self.verified(tasks, outcomes) or {"latencies_ms": latencies}

    def run_concurrent(self, tasks):
        pool, code = self.concurrent_pool, self.source
        started = time.perf_counter()
        outcomes = list(self.threads.map(lambda task: call(pool, code, self.case(task)), tasks))
        wall = time.perf_counter() - started
        return self.verified(tasks, outcomes) or {"wall_s": wall}

    def verified(self, tasks, outcomes):
        for task, outcome in zip(tasks, outcomes):
            wrong = check(task, self.case(task), outcome)
            if wrong:
                return {"mismatch": wrong}
        return None


def main():
    concurrency = int(sys.argv[1])
    with pools(concurrency) as (sequential_pool, concurrent_pool), ThreadPoolExecutor(
        concurrency
    ) as threads:
        runner = Runner(sequential_pool, concurrent_pool, threads)
        reply({"ready": True, "version": VERSION})
        for line in sys.stdin:
            request = json.loads(line)
            try:
                reply(runner.load(request) if request["op"] == "load" else runner.run(request))
            except Exception as error:  # reported to the harness, which shows it
                reply({"error": f"{type(error).__name__}: {error}"})


if __name__ == "__main__":
    try:
        main()
    except Exception as error:
        reply({"error": f"{type(error).__name__}: {error}"})
