"""pydantic-monty: a fresh session (`checkout()` + `feed_run()`) of a warm pool
of monty worker processes per task; one worker for the sequential runs,
CONCURRENCY for the concurrent ones."""

import contextlib

import pydantic_monty
from pydantic_monty import Monty, MontyRuntimeError

VERSION = pydantic_monty.__version__
INPUT_NAME = "bench_input"


@contextlib.contextmanager
def pools(concurrency):
    with Monty(min_processes=1, max_processes=1) as sequential, Monty(
        min_processes=concurrency, max_processes=concurrency
    ) as concurrent:
        yield sequential, concurrent


def source(code):
    # The call is an expression after the module: feed_run returns its value.
    return code + f"\nf({INPUT_NAME})\n"


def call(pool, source, case):
    with pool.checkout() as session:
        try:
            return ("value", session.feed_run(source, inputs={INPUT_NAME: case["input"]}))
        except MontyRuntimeError as error:
            return ("raised", type(error.exception()).__name__)
