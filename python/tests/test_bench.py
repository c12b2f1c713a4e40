"""The bench harness's python workload runs this package (its numbers are
the README's; here only that it works and checks answers)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def test_the_python_workload_compares_map_with_batch():
    binary = os.environ.get("LATTICE_BINARY") or str(ROOT / "target/debug/lattice-wasm")
    if not os.path.exists(binary):
        if os.environ.get("CI"):
            pytest.fail(f"no lattice-wasm binary at {binary}")
        pytest.skip("no lattice-wasm binary (cargo build)")
    out = subprocess.run(
        [binary, "bench", "--workloads", "python", "--tiers", "wasm", "--tasks", "40", "--json",
         "--lattice-python", sys.executable],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)["python"]
    assert row["tier"] == "wasm" and row["tasks"] == 40
    assert row["map_per_s"] > 0 and row["batch_per_s"] > 0
    assert row["vs_batch"] == pytest.approx(row["map_per_s"] / row["batch_per_s"])
