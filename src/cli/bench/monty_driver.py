"""Runs pydantic-monty for `lattice-wasm bench` and times it from inside Python.

Started as `python -c <this file> CONCURRENCY`; speaks JSON lines:
  -> {"op": "load", "code": ..., "cases": [{"input": ..., "expect": {"value": ...} | {"raises": "ValueError"}}]}
  <- {"ok": true}
  -> {"op": "run", "first": 0, "count": 10, "concurrent": false}
  <- {"latencies_ms": [...]}  (one task at a time)   or   {"wall_s": 1.2}  (CONCURRENCY at a time)
Any reply may instead be {"mismatch": "..."} (a wrong answer) or {"error": "..."}.

Task i calls the workload's `f` on case i % len(cases) in a fresh session
(`checkout()` + `feed_run()`) of a warm pool of monty worker processes: one
worker for the sequential runs, CONCURRENCY for the concurrent ones. The
answer is checked against the expected one after the clock stops.
"""

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pydantic_monty
from pydantic_monty import Monty, MontyRuntimeError

INPUT_NAME = "bench_input"


def reply(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def call(pool, source, case):
    """One task: ("value", result) or ("raised", exception type name)."""
    with pool.checkout() as session:
        try:
            return ("value", session.feed_run(source, inputs={INPUT_NAME: case["input"]}))
        except MontyRuntimeError as error:
            return ("raised", type(error.exception()).__name__)


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
        # The call is an expression after the module: feed_run returns its value.
        self.source = request["code"] + f"\nf({INPUT_NAME})\n"
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
        pool, source = self.concurrent_pool, self.source
        started = time.perf_counter()
        outcomes = list(self.threads.map(lambda task: call(pool, source, self.case(task)), tasks))
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
    with Monty(min_processes=1, max_processes=1) as sequential_pool, Monty(
        min_processes=concurrency, max_processes=concurrency
    ) as concurrent_pool, ThreadPoolExecutor(concurrency) as threads:
        runner = Runner(sequential_pool, concurrent_pool, threads)
        reply({"ready": True, "version": pydantic_monty.__version__})
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
