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

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
