#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need,
# then runs lints, unit, integration and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each stage says when it starts (seconds since this script started), so a
# run's log shows where its time went.
started=$(date +%s)
stage() { echo "test.sh: [$(( $(date +%s) - started ))s] $*" >&2; }

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  . "$HOME/.cargo/env"
fi
# The process tiers run Debian's CPython as an unprivileged uid (pyenv's
# interpreter under /root is not reachable by that uid).
if ! [ -x /usr/bin/python3 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq python3 >/dev/null
  else
    echo "test.sh: /usr/bin/python3 is missing; install python3" >&2
    exit 1
  fi
fi

# The docker tier's tests need a running engine and a local Python image
# (no registry is needed: scripts/docker-image.sh builds one from the host's
# python3). In CI they fail, not skip, without them.
if [ "$(id -u)" = 0 ]; then
  if ! command -v dockerd >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  fi
  if ! docker info >/dev/null 2>&1; then
    nohup dockerd --bridge=none --iptables=false --ip-forward=false \
      >/tmp/lattice-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  fi
fi
stage docker image
docker image inspect lattice/python:3.11 >/dev/null 2>&1 || scripts/docker-image.sh

# The Wasm component fixture of the tests is built for WASI preview 2.
stage wasm32-wasip2 target
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

stage fmt
cargo fmt --all -- --check

# The venvs the later stages use (the Ray cluster's, the MCP and
# SandboxFusion clients', the Python package's, the bench's references) are
# made while the crate builds: they wait on the network, the build on the
# CPU. (In a session of their own, so that an early exit stops them; waited
# for before use.)
stage venvs: made in the background
mkdir -p target
setsid --wait bash -c './scripts/ray-cluster.sh venv && ./scripts/mcp-venv.sh >/dev/null && ./scripts/python-package.sh venv >/dev/null && ./scripts/reference-pythons.sh >/dev/null' \
  >target/venvs.log 2>&1 &
venvs=$!
background=("$venvs")
stop_background() { for job in "${background[@]}"; do kill -- -"$job" 2>/dev/null || true; done; }
trap stop_background EXIT
# A CI machine builds everything once: the incremental caches of the
# workspace's crates would only cost time to write.
[ "${CI:-}" = true ] && export CARGO_INCREMENTAL=0
# Clippy lints the workspace's crates while they are compiled for the tests:
# clippy-driver is the workspace's rustc wrapper in every build below, with
# -D warnings, as `cargo clippy` runs it. A `cargo clippy` of its own
# checked every dependency once more besides building it (~5 min on 2
# cores). The Python package's crate is linted the same way when the wheel
# is built (maturin runs cargo under this environment).
RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver"
[ -x "$RUSTC_WORKSPACE_WRAPPER" ] || { echo "test.sh: clippy is missing: rustup component add clippy" >&2; exit 1; }
CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
export RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
# Every target (the lib, the binary, the tests, the benches, the examples),
# linted. It builds the RustPython guest for wasm32-wasip1 and natively too
# (build.rs installs the rustup target if it is missing). --timings: what
# each crate took, in target/cargo-timings.
stage build and lint
cargo test --locked --no-run --all-targets --timings
# The wasm tier snapshots and compiles its guest once per machine (~30 s);
# do it before the tests so none of them waits on it.
stage doctor --warm
cargo run --locked --quiet -- doctor --warm
# Two builds side by side (each has stretches where one core idles):
# - A crate that depends on the library alone gets the vendored wasmtime,
#   offline, builds without a warning and runs a task (scripts/dependent.sh;
#   it shares target/ and the guest compiled just above). That is CI's
#   check of the library with --no-default-features (the dependent asks for
#   `default-features = false`); its unit tests are the ones `cargo test`
#   runs below. (A `cargo clippy --no-default-features` of its own checked
#   every dependency once more: 67 s.)
# - The fuzz targets (scripts/fuzz.sh build, into target/fuzz; ~4 min cold
#   on 2 cores, once).
# Neither belongs to this workspace: no lint wrapper.
stage dependent crate and fuzz build, side by side
env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS setsid --wait ./scripts/fuzz.sh build >target/fuzz-build.log 2>&1 &
fuzz_build=$!
background+=("$fuzz_build")
env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS ./scripts/dependent.sh
wait "$fuzz_build" || { cat target/fuzz-build.log >&2; echo "test.sh: building the fuzz targets failed" >&2; exit 1; }
# Coverage-guided fuzzing of the task/result JSON decoders and the CLI's
# argument grammar, 60 s per target from the committed corpus (fuzz/). The
# fuzzers run while the Ray cluster starts and the Python package is
# built, and are waited for before the tests run.
env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS setsid --wait ./scripts/fuzz.sh 60 >target/fuzz/run.log 2>&1 &
fuzzing=$!
background+=("$fuzzing")
stage venvs: waiting for them
wait "$venvs" || { cat target/venvs.log >&2; echo "test.sh: making the venvs failed" >&2; exit 1; }
# The Ray executor's tests run on a two-node Ray cluster on this machine
# (its venv is target/ray-venv, ~20 s to start); only that cluster is
# stopped on exit. The `mcp` and `serve` commands are tested with the
# official MCP Python SDK and SandboxFusion's client as their clients, from
# target/mcp-venv.
LATTICE_MCP_PYTHON=$(./scripts/mcp-venv.sh)
export LATTICE_MCP_PYTHON
# The bench's package references, pydantic-monty and eryx (eryx needs a
# Python >= 3.12: Debian 13's, unpacked under target/references).
{ read -r LATTICE_MONTY_PYTHON; read -r LATTICE_ERYX_PYTHON; } < <(./scripts/reference-pythons.sh)
export LATTICE_MONTY_PYTHON LATTICE_ERYX_PYTHON
stage ray cluster
./scripts/ray-cluster.sh start
trap 'stop_background; ./scripts/ray-cluster.sh stop' EXIT
stage cargo test: build
cargo test --locked --no-run --all-targets
# The Python package (python/): its abi3 wheel, built in the dev profile so
# it links the artifacts just built, installed into a fresh venv; its pytest
# suite (the wasm tier and a process tier, the Ray tests on the cluster
# above, the README's Python block) and doc tests.
stage python package
LATTICE_TEST_PYTHON=$(./scripts/python-package.sh)
LATTICE_BINARY=$PWD/target/debug/lattice-wasm "$(dirname "$LATTICE_TEST_PYTHON")/pytest" -q \
  python/tests --doctest-modules --pyargs lattice_wasm
stage fuzz: waiting for the fuzzers
status=0
wait "$fuzzing" || status=$?
cat target/fuzz/run.log >&2
[ "$status" = 0 ] || { echo "test.sh: fuzzing failed (scripts/fuzz.sh, exit $status)" >&2; exit 1; }
stage cargo test: run
# Each integration suite's turns and each test's time go to
# target/suite-times.txt (tests/common): the seconds per suite and the
# slowest tests are printed after the run.
export LATTICE_SUITE_TIMES="$PWD/target/suite-times.txt"
rm -f "$LATTICE_SUITE_TIMES"
cargo test --locked --no-fail-fast
if [ -f "$LATTICE_SUITE_TIMES" ]; then
  awk '$2 == "starts" { from[$3] = $1 } $2 == "ends" { took[$3] += $1 - from[$3] }
    END { for (s in took) printf "%7.1f s  %s\n", took[s], s }' "$LATTICE_SUITE_TIMES" | sort -rn >&2
  echo "the slowest tests:" >&2
  awk '$2 == "took" { printf "%7.1f s  %s\n", $3, $4 }' "$LATTICE_SUITE_TIMES" | sort -rn | head -n 10 >&2
fi
stage done
