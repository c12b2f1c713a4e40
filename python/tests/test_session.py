"""Session: state across calls, host functions, snapshots, closing."""

import asyncio
import subprocess
import sys
import threading

import pytest

import lattice_wasm as lw

from conftest import TIERS, descendants, interrupted_child, wait_until


@pytest.mark.parametrize("tier", TIERS)
def test_state_is_kept_across_exec_and_call(tier):
    with lw.Session(tier) as session:
        assert session.tier == tier and session.is_open
        defined = session.exec("def area(w, h):\n    return w * h\nunit = 'm2'")
        assert defined.ok and defined.result is None and defined.repr is None
        reply = session.exec("print('computing')\nf'{area(3, 4)} {unit}'")
        assert reply.result == "12 m2" and reply.repr == "'12 m2'"
        assert reply.stdout == "computing\n" and reply.session == "ready"
        assert session.call("area", args=[2, 5]).unwrap() == 10
        assert session.call("area", kwargs={"w": 2, "h": 6}).unwrap() == 12
        assert session.exec("object()").result is None  # no JSON form
        failed = session.exec("1 / 0")
        assert failed.error.type == "ZeroDivisionError"
        with pytest.raises(lw.TaskError):
            failed.unwrap()
        assert session.exec("unit").unwrap() == "m2"  # still usable
    assert not session.is_open
    with pytest.raises(lw.LatticeError):
        session.exec("1").unwrap()


@pytest.mark.parametrize("tier", TIERS)
def test_a_limit_says_what_it_left_of_the_session(tier):
    with lw.Session(tier, timeout_s=1) as session:
        session.exec("x = 1")
        spun = session.exec("while True:\n    x += 1")
        assert spun.error.kind == "timeout"
        assert spun.session in ("interrupted", "rolled_back", "closed")
        if spun.session != "closed":
            assert isinstance(session.exec("x").unwrap(), int)


@pytest.mark.parametrize("tier", TIERS)
def test_host_functions_sync_async_and_their_errors(tier):
    calls = []

    def record(event, **details):
        calls.append((event, details))
        return len(calls)

    async def fetch(url):
        await asyncio.sleep(0.01)
        return {"url": url, "status": 200}

    def broken():
        raise PermissionError("no access to that")

    functions = {"record": record, "fetch": fetch, "broken": broken}
    with lw.Session(tier, functions=functions) as session:
        assert session.exec("record('start', user='ada')").unwrap() == 1
        assert session.exec("fetch('https://example.org')['status']").unwrap() == 200
        caught = session.exec(
            "try:\n    broken()\nexcept Exception as e:\n    msg = type(e).__name__ + ': ' + str(e)\nmsg"
        ).unwrap()
        assert caught.startswith("HostError") and "no access to that" in caught
        assert "Traceback" not in caught and __file__ not in caught
        uncaught = session.exec("broken()")
        assert uncaught.error.kind == "task_error" and "no access" in uncaught.error.message
        assert session.exec("secret()").error.type == "NameError"
    assert calls == [("start", {"user": "ada"})]


def test_snapshot_restore_and_fork():
    with lw.Session() as session:
        session.exec("data = list(range(1000))\ntotal = sum(data)")
        snapshot = session.snapshot()
        assert isinstance(snapshot, bytes) and 0 < len(snapshot) < 3 << 20
        copy = session.fork()
        copy.exec("total = -1")
        assert session.exec("total").unwrap() == 499500
        assert copy.exec("total").unwrap() == -1
        copy.close()
    restored = lw.Session.restore(snapshot)
    assert restored.exec("total + len(data)").unwrap() == 500500
    restored.close()
    with pytest.raises(lw.InvalidTaskError):
        lw.Session.restore(b"not a snapshot")
    with pytest.raises(lw.InvalidTaskError):
        lw.Session.restore(snapshot[: len(snapshot) // 2])


def test_a_snapshot_restores_in_another_process(tmp_path):
    with lw.Session() as session:
        session.exec("greeting = 'hello from the first process'")
        (tmp_path / "snap").write_bytes(session.snapshot())
    script = (
        "import sys, lattice_wasm as lw\n"
        "s = lw.Session.restore(open(sys.argv[1], 'rb').read())\n"
        "print(s.exec('greeting').unwrap())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "snap")], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "hello from the first process"


def test_snapshots_are_refused_on_process_tiers():
    with lw.Session("subprocess") as session:
        with pytest.raises(lw.LatticeError, match="snapshot|wasm"):
            session.snapshot()
        with pytest.raises(lw.LatticeError):
            session.fork()


def test_a_session_used_from_two_threads_takes_turns():
    with lw.Session() as session:
        session.exec("n = 0\ndef bump():\n    global n\n    for _ in range(100):\n        n += 1\n    return n")
        errors = []

        def worker():
            for _ in range(20):
                if not session.call("bump").ok:
                    errors.append("failed")

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert session.exec("n").unwrap() == 4000


def test_closing_a_process_session_leaves_no_process():
    session = lw.Session("subprocess")
    assert session.exec("import os\nos.getpid()").unwrap() > 0
    assert descendants(), "the session's CPython process runs"
    session.close()
    session.close()  # closing again does nothing
    assert wait_until(lambda: not descendants()), descendants()


def test_async_host_functions_from_code_running_inside_an_event_loop():
    async def double(x):
        await asyncio.sleep(0)
        return 2 * x

    async def main():
        # A blocking exec inside a running loop: the coroutine is awaited on a loop of its own.
        with lw.Session(functions={"double": double}) as session:
            return session.exec("double(21)").unwrap()

    assert asyncio.run(main()) == 42


def test_the_session_can_be_inspected_from_its_own_host_function():
    holder = {}

    def describe():
        return [holder["session"].is_open, repr(holder["session"])]

    with lw.Session(functions={"describe": describe}) as session:
        holder["session"] = session
        is_open, text = session.exec("describe()").unwrap()
        assert is_open is True and "open" in text


def test_ctrl_c_interrupts_a_session_call_and_the_session_goes_on():
    body = (
        "s = lw.Session(sys.argv[1])\n"
        "s.exec('x = 1')\n"
        "print('started', flush=True)\n"
        "try:\n"
        "    s.exec('while True:\\n    x += 1')\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', isinstance(s.exec('x').unwrap(), int), flush=True)\n"
        "s.close()\n"
    )
    for tier in TIERS:
        assert interrupted_child(body, tier) == ("interrupted True", 0), tier
