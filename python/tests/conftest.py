"""Shared helpers of the package's tests (run on the installed wheel)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The tiers every feature is tested on: the default, and a process tier.
TIERS = ["wasm", "subprocess"]


def descendants(pid=None):
    """The pids of this process's descendants (from /proc)."""
    pid = pid or os.getpid()
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def wait_until(predicate, seconds=10.0):
    """True once predicate() is, polling for up to `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def ray_cluster():
    """The test cluster's settings (scripts/ray-cluster.sh), or None."""
    settings = {}
    env_file = ROOT / "target/ray-cluster/cluster.env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip().strip("'\"")
    for key in ("LATTICE_RAY_ADDRESS", "LATTICE_RAY_DASHBOARD", "LATTICE_RAY_PYTHON"):
        if os.environ.get(key):
            settings[key] = os.environ[key]
    return settings if settings.get("LATTICE_RAY_ADDRESS") else None


@pytest.fixture
def cluster():
    settings = ray_cluster()
    binary = os.environ.get("LATTICE_BINARY") or str(ROOT / "target/debug/lattice-wasm")
    if settings is None or not os.path.exists(binary):
        if os.environ.get("CI"):
            pytest.fail("CI runs these tests on the Ray cluster scripts/ray-cluster.sh starts")
        pytest.skip("no Ray cluster (scripts/ray-cluster.sh start) or lattice-wasm binary")
    settings["binary"] = binary
    return settings


def interrupted_child(body, tier, timeout=60):
    """Runs ``body`` (Python source that prints ``started`` and then
    blocks) in a child Python with the terminal's SIGINT handler (a
    background job, as CI runs the suite, inherits SIGINT ignored), sends it
    Ctrl-C 1.5 s later, and returns (its output, its exit code)."""
    script = (
        "import lattice_wasm as lw, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n" + body
    )
    child = subprocess.Popen([sys.executable, "-c", script, tier], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "started"
        time.sleep(1.5)
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=timeout)
    finally:
        child.kill()
        child.wait()
    return out.strip(), child.returncode
