#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need,
# then runs lints, unit, integration and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."

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

# The Wasm component fixture of the tests is built for WASI preview 2.
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

cargo fmt --all -- --check
# Builds the RustPython guest for wasm32-wasip1 too (build.rs installs the
# rustup target if it is missing).
cargo clippy --all-targets --locked -- -D warnings
# The wasm tier snapshots and compiles its guest once per machine (~30 s);
# do it before the tests so none of them waits on it.
cargo run --locked --quiet -- doctor --warm
cargo test --locked --no-fail-fast
