"""lattice_wasm.executor: the original framework's executor API."""

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from lattice_wasm import errors
from lattice_wasm.executor import (
    CodeRunner,
    ExecutorBackend,
    ExecutorType,
    NodeFailedError,
    SandboxConfig,
    SandboxExecutor,
    SandboxLevel,
    TaskCancelledError,
    TaskError,
    TaskHandle,
    TaskSubmission,
    create_executor,
    get_sandbox_config,
    get_sandbox_executor,
    set_sandbox_config,
)

from conftest import descendants, wait_until


def add(a, b):
    return a + b


def spin():
    while True:
        pass


def fails(message):
    raise ValueError(message)


def test_the_seed_names_are_the_package_exceptions():
    assert TaskError is errors.TaskError
    assert TaskCancelledError is errors.TaskCancelledError
    assert NodeFailedError is errors.NodeFailedError
    assert {t.value for t in ExecutorType} == {"ray", "local"}
    assert SandboxLevel("seccomp") is SandboxLevel.SECCOMP


@pytest.mark.parametrize("level", [SandboxLevel.WASM, SandboxLevel.SUBPROCESS])
def test_local_executor_submit_get_result_wait_cancel(level):
    executor = create_executor(
        ExecutorType.LOCAL, max_workers=2, sandbox_config=SandboxConfig(level=level, timeout=60)
    )
    assert isinstance(executor, ExecutorBackend)
    executor.initialize()
    try:
        handle = executor.submit(TaskSubmission(add, args=(2, 3)))
        assert isinstance(handle, TaskHandle) and handle.executor_type == ExecutorType.LOCAL
        assert executor.get_result(handle) == 5
        assert executor.get_result(handle) == 5  # asked again
        by_kwargs = executor.submit(TaskSubmission(add, kwargs={"a": "x", "b": "y"}))
        text = executor.submit(TaskSubmission("def mul(a, b):\n    return a * b\n", args=(6, 7)))
        done, pending = executor.wait([by_kwargs, text], timeout=None)
        assert (done, pending) == ([by_kwargs, text], [])
        assert executor.get_result(by_kwargs) == "xy" and executor.get_result(text) == 42
        outcome = executor.get_outcome(text)
        assert outcome.tier == level.value

        with pytest.raises(TaskError) as caught:
            executor.get_result(executor.submit(TaskSubmission(fails, args=("boom",))))
        assert caught.value.type == "ValueError" and "boom" in caught.value.message

        spinning = executor.submit(TaskSubmission(spin))
        done, pending = executor.wait([spinning], timeout=0)
        assert (done, pending) == ([], [spinning])
        done, pending = executor.wait([spinning], timeout=0.3)
        assert pending == [spinning]
        assert executor.cancel(spinning) is True
        with pytest.raises(TaskCancelledError):
            executor.get_result(spinning)
        assert executor.cancel(spinning) is False

        resources = executor.get_available_resources()
        assert resources["nodes"][0]["node_id"] == "local"
        assert resources["nodes"][0]["cpu"] >= 1
    finally:
        executor.shutdown()
    assert wait_until(lambda: not descendants()), descendants()


def test_lambdas_and_closures_are_clear_errors():
    executor = create_executor(ExecutorType.LOCAL)
    factor = 3

    def scaled(x):
        return x * factor

    for func in (lambda x: x, scaled, print, 42):
        with pytest.raises(errors.InvalidTaskError, match="lambda|nested|closure|module-level"):
            executor.submit(TaskSubmission(func, args=(1,)))
    executor.shutdown()


def test_handles_of_another_executor_are_refused():
    first, second = create_executor(ExecutorType.LOCAL), create_executor("local")
    mine = first.submit(TaskSubmission(add, args=(1, 1)))
    theirs = second.submit(TaskSubmission(add, args=(5, 5)))
    assert mine.handle_id == theirs.handle_id  # each executor numbers its own
    assert first.get_result(mine) == 2
    with pytest.raises(errors.InvalidTaskError):
        first.get_result(theirs)
    with pytest.raises(errors.InvalidTaskError):
        first.get_result(TaskHandle(mine.handle_id, ExecutorType.RAY))
    with pytest.raises(errors.InvalidTaskError):
        second.get_result(TaskHandle(mine.handle_id + 1000, ExecutorType.LOCAL))
    # A handle made by hand is looked up by its id.
    assert second.get_result(TaskHandle(theirs.handle_id, ExecutorType.LOCAL)) == 10
    with pytest.raises(errors.InvalidTaskError):
        create_executor("teleport")
    first.shutdown()
    second.shutdown()


def registered(func):
    """A decorator of this module (the sandbox has no such name)."""
    return func


@registered
def triple(n):
    return n * 3


def test_a_decorated_function_ships_without_its_decorators():
    executor = create_executor(ExecutorType.LOCAL)
    assert executor.get_result(executor.submit(TaskSubmission(triple, args=(4,)))) == 12
    executor.shutdown()


def test_sandbox_config_executor_and_code_runner():
    original = get_sandbox_config()
    assert original.level == SandboxLevel.WASM and original.timeout == 300
    try:
        set_sandbox_config(SandboxConfig(level=SandboxLevel.SUBPROCESS, timeout=30, max_memory_mb=256))
        assert get_sandbox_config().level == SandboxLevel.SUBPROCESS
        record = get_sandbox_executor().execute(
            code_str="def f(d):\n    return d['n'] + 1\n", task_input_data={"n": 1}
        )
        assert record["status"] == "ok" and record["result"] == 2 and record["tier"] == "subprocess"
        assert CodeRunner("def g(d):\n    return sorted(d)\n", [3, 1, 2]).run() == [1, 2, 3]
        with pytest.raises(TaskError):
            CodeRunner("def g(d):\n    return d['missing']\n", {}).run()
        # An executor made without a configuration takes the process-wide one.
        executor = create_executor(ExecutorType.LOCAL)
        assert executor.get_outcome(executor.submit(TaskSubmission(add, args=(1, 2)))).tier == "subprocess"
        executor.shutdown()
    finally:
        set_sandbox_config(original)
    wasm = SandboxExecutor(SandboxConfig(timeout=1)).execute(
        code_str="def f(x):\n    while True:\n        pass\n", task_input_data=0
    )
    assert wasm["status"] == "error" and wasm["error"]["kind"] == "timeout"
    # A Wasm module (its bytes) runs; this one writes no result JSON.
    wat = b"(module (func (export \"_start\")))"
    silent = SandboxExecutor().execute(serialized_code=wat, task_input_data=None)
    assert silent["status"] == "error" and "no result" in silent["error"]["message"], silent
    assert silent["tier"] == "wasm"


def test_mount_paths_are_read_only_by_default():
    # Mounts are reached as an unprivileged user: a directory it can read.
    tmp_path = Path(tempfile.mkdtemp(prefix="lattice-py-"))
    tmp_path.chmod(0o755)
    (tmp_path / "data.txt").write_text("mounted")
    (tmp_path / "data.txt").chmod(0o644)
    config = SandboxConfig(level=SandboxLevel.WASM, mount_paths={str(tmp_path): "/data"})
    reader = "def f(x):\n    return open('/data/data.txt').read()\n"
    assert SandboxExecutor(config).execute(code_str=reader, task_input_data=0)["result"] == "mounted"
    writer = "def f(x):\n    open('/data/new.txt', 'w').write('x')\n"
    refused = SandboxExecutor(config).execute(code_str=writer, task_input_data=0)
    assert refused["status"] == "error" and refused["error"]["type"] in ("PermissionError", "OSError"), refused
    assert not (tmp_path / "new.txt").exists()
    shutil.rmtree(tmp_path)


def test_ray_executor_runs_on_the_cluster(cluster):
    executor = create_executor(
        ExecutorType.RAY,
        address=cluster["LATTICE_RAY_ADDRESS"],
        dashboard=cluster.get("LATTICE_RAY_DASHBOARD"),
        python=cluster.get("LATTICE_RAY_PYTHON"),
        binary=cluster["binary"],
    )
    executor.initialize()
    try:
        nodes = executor.get_available_resources()["nodes"]
        assert len(nodes) >= 2
        handles = [executor.submit(TaskSubmission(add, args=(i, i))) for i in range(4)]
        done, pending = executor.wait(handles, timeout=120)
        assert pending == []
        assert [executor.get_result(h) for h in handles] == [0, 2, 4, 6]
        pinned = nodes[-1]["node_id"]
        handle = executor.submit(TaskSubmission(add, args=(1, 2), node_id=pinned))
        assert executor.get_outcome(handle).node_id == pinned
        spinning = executor.submit(TaskSubmission(spin))
        time.sleep(1)
        assert executor.cancel(spinning)
        with pytest.raises(TaskCancelledError):
            executor.get_result(spinning)
        with pytest.raises(TaskError):
            executor.get_result(executor.submit(TaskSubmission(fails, args=("on ray",))))
    finally:
        executor.shutdown()


def test_ray_executor_without_a_binary_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(errors.SandboxUnavailableError, match="lattice-wasm binary"):
        create_executor(ExecutorType.RAY, address="127.0.0.1:1")
