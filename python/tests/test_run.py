"""run, run_async, map: values, errors, limits, scripts, the GIL, threads."""

import asyncio
import threading
import time

import pytest

import lattice_wasm as lw
from lattice_wasm import errors

from conftest import TIERS, descendants, interrupted_child, wait_until

DOUBLE = "def double(x):\n    return 2 * x\n"


@pytest.mark.parametrize("tier", TIERS)
def test_run_returns_the_value_and_what_ran_it(tier):
    result = lw.run(DOUBLE, 21, tier=tier)
    assert result.ok and result.status == "ok"
    assert result.result == 42 and result.unwrap() == 42
    assert result.error is None
    assert result.tier == tier and result.node_id == "local"
    assert result.duration_ms > 0


@pytest.mark.parametrize("tier", TIERS)
def test_args_kwargs_entry_output_and_explicit_none(tier):
    code = "def helper():\n    pass\ndef f(a, b=0, *, c=1):\n    print('hi', a)\n    return [a, b, c]\n"
    result = lw.run(code, args=[1, 2], kwargs={"c": 3}, entry="f", tier=tier)
    assert result.unwrap() == [1, 2, 3]
    assert result.stdout == "hi 1\n"
    assert lw.run("def f(x):\n    return x is None\n", None, tier=tier).unwrap() is True
    assert lw.run("def f():\n    return 'no input'\n", tier=tier).unwrap() == "no input"


@pytest.mark.parametrize("tier", TIERS)
def test_a_raising_task_is_a_typed_task_error(tier):
    result = lw.run("def f(x):\n    raise KeyError('missing')\n", 1, tier=tier)
    assert result.status == "error" and result.result is None
    assert result.error.kind == "task_error" and result.error.type == "KeyError"
    assert "missing" in result.error.message
    assert "line 2" in result.error.traceback
    with pytest.raises(lw.TaskError) as caught:
        result.unwrap()
    assert caught.value.type == "KeyError" and "missing" in caught.value.message
    assert isinstance(caught.value, lw.LatticeError)


@pytest.mark.parametrize("tier", TIERS)
def test_limits_raise_their_own_exceptions(tier):
    spin = lw.run("def f(x):\n    while True:\n        pass\n", 0, tier=tier, timeout_s=1)
    assert spin.error.kind == "timeout"
    with pytest.raises(lw.TaskTimeoutError):
        spin.unwrap()
    hog = lw.run(
        "def f(x):\n    b = []\n    while True:\n        b.append(bytearray(1 << 20))\n",
        0,
        tier=tier,
        max_memory_mb=96,
        timeout_s=60,
    )
    assert hog.error.kind == "memory_limit", hog
    with pytest.raises(lw.MemoryLimitError):
        hog.unwrap()


def test_bad_tasks_are_invalid_task_errors():
    with pytest.raises(lw.InvalidTaskError):
        lw.run("def f(x) return", 1).unwrap()
    with pytest.raises(lw.InvalidTaskError):
        lw.run("x = 1\n", 1).unwrap()  # no function
    with pytest.raises(lw.InvalidTaskError, match="not JSON"):
        lw.run(DOUBLE, {1, 2})
    with pytest.raises(lw.InvalidTaskError):
        lw.run(DOUBLE, 1, tier="teleport")
    with pytest.raises(lw.InvalidTaskError):
        lw.run(DOUBLE, 1, timeout_s=-1)
    with pytest.raises(lw.InvalidTaskError):
        lw.run(b"def f(x): return x", 1)
    with pytest.raises(TypeError):
        lw.run(DOUBLE, 1, no_such_option=True)


def test_allowed_imports_and_no_network_hold():
    denied = lw.run("def f(x):\n    import os\n    return 1\n", 0, allowed_imports=["math"])
    assert denied.error.kind == "task_error" and denied.error.type == "ImportError"
    allowed = lw.run("def f(x):\n    import math\n    return math.floor(x)\n", 2.5, allowed_imports=["math"])
    assert allowed.unwrap() == 2
    socket = lw.run(
        "def f(x):\n    import socket\n    socket.create_connection(('127.0.0.1', 9), 1)\n",
        0,
        tier="subprocess",
    )
    assert socket.status == "error"


@pytest.mark.parametrize("tier", TIERS)
def test_script_mode_reads_stdin_and_gives_exit_code_and_files(tier):
    program = (
        "import sys\n"
        "name = input()\n"
        "print('hello', name)\n"
        "open('out.txt', 'w').write(open('in.txt').read().upper())\n"
        "sys.exit(3)\n"
    )
    result = lw.run(
        program,
        script=True,
        stdin="ada\n",
        files={"in.txt": b"data"},
        fetch_files=["out.txt"],
        tier=tier,
    )
    assert result.stdout == "hello ada\n"
    assert result.exit_code == 3
    assert result.files == {"out.txt": b"DATA"}


def test_map_keeps_input_order_and_each_input_has_its_outcome():
    code = "def f(x):\n    if x == 3:\n        raise ValueError('three')\n    return x * x\n"
    results = lw.map(code, range(8), concurrency=3)
    assert [r.result for r in results] == [0, 1, 4, None, 16, 25, 36, 49]
    assert results[3].error.type == "ValueError"
    assert all(r.ok for i, r in enumerate(results) if i != 3)
    assert lw.map(code, []) == []
    with pytest.raises(lw.InvalidTaskError):
        lw.map(code, [1, object()])
    with pytest.raises(lw.InvalidTaskError):
        lw.map(code, [1], concurrency=0)


def test_map_on_a_process_tier():
    results = lw.map(DOUBLE, [1, 2, 3], tier="subprocess", concurrency=2)
    assert [r.unwrap() for r in results] == [2, 4, 6]
    assert {r.tier for r in results} == {"subprocess"}


def test_one_shot_host_functions_sync_and_async():
    async def weather(city):
        await asyncio.sleep(0.01)
        return {"city": city, "sky": "clear"}

    def fail():
        raise RuntimeError("the host says no")

    code = (
        "def f(x):\n"
        "    try:\n"
        "        fail()\n"
        "    except Exception as e:\n"
        "        caught = str(e)\n"
        "    return [add(x, 2), weather(city='Oslo')['sky'], caught]\n"
    )
    functions = {"add": lambda a, b: a + b, "weather": weather, "fail": fail}
    for tier in TIERS:
        result = lw.run(code, 40, tier=tier, functions=functions)
        value = result.unwrap()
        assert value[:2] == [42, "clear"]
        assert "the host says no" in value[2] and "Traceback" not in value[2]
    unregistered = lw.run("def f(x):\n    return secret()\n", 0, functions={"add": lambda a, b: 0})
    assert unregistered.error.type == "NameError"


def test_the_gil_is_released_while_a_task_runs():
    done = threading.Event()

    def task():
        lw.run("def f(x):\n    n = 0\n    for i in range(3_000_000):\n        n += i\n    return n\n", 0)
        done.set()

    thread = threading.Thread(target=task)
    thread.start()
    ticks = 0
    while not done.is_set():
        ticks += 1
        time.sleep(0)
    thread.join()
    # A held GIL would leave this thread a handful of switches at most.
    assert ticks > 1000


def test_run_from_many_threads():
    results = {}

    def worker(i):
        results[i] = lw.run(DOUBLE, i).unwrap()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: 2 * i for i in range(16)}


def test_run_async_runs_concurrently_and_cancel_stops_the_task():
    async def main():
        results = await asyncio.gather(*(lw.run_async(DOUBLE, i) for i in range(10)))
        assert [r.unwrap() for r in results] == [2 * i for i in range(10)]
        spin = asyncio.ensure_future(
            lw.run_async("def f(x):\n    while True:\n        pass\n", 0, tier="subprocess")
        )
        await asyncio.sleep(1.0)
        spin.cancel()
        with pytest.raises(asyncio.CancelledError):
            await spin

        async def lookup(key):
            await asyncio.sleep(0)
            return key.upper()

        result = await lw.run_async("def f(x):\n    return lookup(x)\n", "abc", functions={"lookup": lookup})
        assert result.unwrap() == "ABC"

    asyncio.run(main())
    # The cancelled task's CPython process is gone.
    assert wait_until(lambda: not descendants()), descendants()


def test_map_with_host_functions():
    results = lw.map("def f(x):\n    return scale(x)\n", [1, 2, 3], functions={"scale": lambda x: x * 10})
    assert [r.unwrap() for r in results] == [10, 20, 30]


def test_host_function_names_and_values_are_checked():
    for name in ("not valid", "_private", "class", ""):
        with pytest.raises(lw.InvalidTaskError):
            lw.run("def f(x):\n    return x\n", 1, functions={name: lambda: 1}).unwrap()
    with pytest.raises(lw.InvalidTaskError):
        lw.run("def f(x):\n    return x\n", 1, functions={"fine": 42})
    not_json = lw.run(
        "def f(x):\n    try:\n        odd()\n    except Exception as e:\n        return str(e)\n",
        0,
        functions={"odd": lambda: {1, 2}},
    )
    assert "not JSON serializable" in not_json.unwrap()


def test_ctrl_c_cancels_a_blocked_call_and_leaves_no_process():
    body = (
        "print('started', flush=True)\n"
        "try:\n"
        "    lw.run('def f(x):\\n    while True:\\n        pass\\n', 0, tier=sys.argv[1])\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
    )
    for tier in TIERS:
        assert interrupted_child(body, tier, timeout=30) == ("interrupted", 0), tier
        assert wait_until(lambda: not descendants()), descendants()
