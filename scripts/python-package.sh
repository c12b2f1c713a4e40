#!/usr/bin/env bash
# Builds the Python package (python/: PyO3 + maturin, abi3 wheel) into
# target/wheels, reusing target/ (its dev profile: the same artifacts as the
# tests' build), and installs it into a fresh venv, target/py-venv, with
# pytest. Prints the venv's python.
#   LATTICE_WHEEL_PROFILE=release  for a release wheel (benchmarks)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${LATTICE_PY_VENV:-$ROOT/target/py-venv}
PROFILE=${LATTICE_WHEEL_PROFILE:-dev}
MATURIN=1.9.6
PYTEST=8.4.2
base=${LATTICE_PY_BASE_PYTHON:-python3}
# A fresh venv each time: the wheel is tested as a user installs it.
rm -rf "$VENV"
"$base" -m venv "$VENV" >&2
"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
"$VENV/bin/python" -m pip install --quiet "maturin==$MATURIN" "pytest==$PYTEST" >&2
rm -rf "$ROOT/target/wheels"
(cd "$ROOT" && "$VENV/bin/maturin" build --quiet --locked --profile "$PROFILE" \
  -m python/Cargo.toml --interpreter "$VENV/bin/python" -o target/wheels >&2)
"$VENV/bin/python" -m pip install --quiet "$ROOT"/target/wheels/lattice_wasm-*.whl >&2
echo "$VENV/bin/python"
