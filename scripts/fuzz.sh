#!/usr/bin/env bash
# Fuzzes the task/result JSON decoders and the CLI's argument grammar
# (fuzz/fuzz_targets) for a bounded time each: scripts/fuzz.sh [SECONDS]
# (default 60). Starts from the committed corpus in fuzz/corpus/<target>;
# new inputs go to target/fuzz/corpus/<target> (fold them in with
# `cargo fuzz cmin -s none <target> fuzz/corpus/<target>` after copying).
# A crash fails the script and leaves its input in fuzz/artifacts/<target>.
# `scripts/fuzz.sh build` only builds the targets.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
# The fuzz build embeds the Python guests the main build made (build.rs
# takes these instead of building them again).
host="$(rustc -vV | sed -n 's/^host: //p')"
export LATTICE_GUEST_WASM="$PWD/target/guest/wasm32-wasip1/release/lattice-guest.wasm"
export LATTICE_NATIVE_PYTHON="$PWD/target/guest/$host/release/liblattice_guest.so"
if ! [ -f "$LATTICE_GUEST_WASM" ] || ! [ -f "$LATTICE_NATIVE_PYTHON" ]; then
  echo "fuzz.sh: build the crate first (cargo build): the guests are missing" >&2
  exit 1
fi

# The fuzzed code is safe Rust: coverage-guided fuzzing without a
# sanitizer, which builds on the stable toolchain. Its (instrumented) build
# lives in the one target dir, under target/fuzz. Both targets are built
# first, then fuzzed side by side: libFuzzer runs on one core each.
targets=(task_json cli_args)
cargo fuzz build --sanitizer none --target-dir "$PWD/target/fuzz"
[ "$seconds" = build ] && exit 0
pids=()
for target in "${targets[@]}"; do
  mkdir -p "target/fuzz/corpus/$target"
  cargo fuzz run --sanitizer none --target-dir "$PWD/target/fuzz" "$target" \
    "target/fuzz/corpus/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
    >"target/fuzz/$target.log" 2>&1 &
  pids+=($!)
done
failed=0
for i in "${!targets[@]}"; do
  target=${targets[$i]}
  log="target/fuzz/$target.log"
  status=0
  wait "${pids[$i]}" || status=$?
  grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' "$log" | sed "s/^/$target: /" || true
  if [ "$status" != 0 ]; then
    tail -n 60 "$log" >&2
    echo "fuzz.sh: $target failed (exit $status); a crashing input is in fuzz/artifacts/$target" >&2
    failed=1
  fi
done
exit "$failed"
