#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for a bounded time each: SECONDS per target, 20 by
# default. Installs cargo-fuzz from crates.io when missing. The targets need the compiler's
# unstable sanitizer flags, which RUSTC_BOOTSTRAP enables on the stable toolchain.
# A failure leaves the input that caused it in fuzz/artifacts/TARGET/ and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2

export RUSTC_BOOTSTRAP=1
cd fuzz
cargo fuzz build -O
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for target in $(cargo fuzz list); do
  echo "== fuzz $target for ${seconds}s"
  if ! cargo fuzz run -O "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E "^Done" "$log"
done
