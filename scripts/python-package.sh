#!/usr/bin/env bash
# Installs the Python package (python/: PyO3 + maturin, an abi3 wheel) into
# a fresh venv, target/py-venv, the way the README says — `pip install
# ./python` — with pytest beside it. Prints the venv's python.
#
# The wheel is built in the dev profile (LATTICE_WHEEL_PROFILE=release for
# benchmarks), into target/ (the workspace's), so it links the artifacts the
# Rust build made instead of building wasmtime and RustPython again.
#
# `scripts/python-package.sh venv` only makes the venv (with pytest), ahead
# of the build; the next run installs into that venv instead of making a
# new one.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${LATTICE_PY_VENV:-$ROOT/target/py-venv}
PROFILE=${LATTICE_WHEEL_PROFILE:-dev}
PYTEST=8.4.2
base=${LATTICE_PY_BASE_PYTHON:-python3}
if [ "${1:-}" = venv ] || ! [ -f "$VENV/.lattice-fresh" ]; then
  rm -rf "$VENV"
  "$base" -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet "pytest==$PYTEST" >&2
  touch "$VENV/.lattice-fresh"
  [ "${1:-}" = venv ] && exit 0
fi
rm -f "$VENV/.lattice-fresh"
(cd "$ROOT" && MATURIN_PEP517_ARGS="--profile $PROFILE --locked" \
  "$VENV/bin/python" -m pip install --quiet ./python >&2)
echo "$VENV/bin/python"
