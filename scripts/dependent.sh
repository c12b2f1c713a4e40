#!/usr/bin/env bash
# A crate that depends on lattice-wasm (tests/fixtures/dependent), built with
# the library alone, offline: it must resolve, get the vendored (patched)
# wasmtime rather than crates.io's, build without a warning and run a task.
# Shares target/.
set -euo pipefail
cd "$(dirname "$0")/.."
manifest=tests/fixtures/dependent/Cargo.toml
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# Two wasmtime packages (the vendored one and crates.io's) make this fail.
sources=$(cargo tree --locked --offline --manifest-path "$manifest" -e normal -i wasmtime --depth 0 2>&1) || {
  echo "dependent.sh: can't tell which wasmtime the dependent gets (two of them, or a missing crate offline): $sources" >&2
  exit 1
}
case "$sources" in
  *"/vendor/wasmtime)"*) ;;
  *) echo "dependent.sh: the dependent does not get the vendored wasmtime: $sources" >&2; exit 1 ;;
esac
if cargo tree --locked --offline --manifest-path "$manifest" -e normal | grep -Eq '^.*(bollard|reqwest|clap) v'; then
  echo "dependent.sh: the library without features still pulls in bollard, reqwest or clap" >&2
  exit 1
fi
# The library without features builds without a warning: cargo shows a
# path dependency's warnings (and replays them when the build is fresh).
# (The default features' build is linted by clippy in scripts/test.sh.)
warnings=$(cargo build --locked --offline --manifest-path "$manifest" --message-format=json |
  python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-message" and message["target"]["name"] == "lattice":
        print(message["message"]["rendered"])
')
[ -z "$warnings" ] || { echo "dependent.sh: the library without features warns:" >&2; echo "$warnings" >&2; exit 1; }
out=$(cargo run --locked --offline --quiet --manifest-path "$manifest")
[ "$out" = 42 ] || { echo "dependent.sh: expected 42, got: $out" >&2; exit 1; }
echo "dependent.sh: a dependent crate builds offline on the vendored wasmtime and runs a task"
