#!/usr/bin/env bash
# The benchmark suite in one command: builds the release binaries and runs `tollgate-bench suite`
# (pass-through, exact hit, semantic hit, rate-limited, streaming time to first token and
# inter-token gap, session turns, Responses chains; each next to its baseline measured in the
# same run) and prints a markdown table. Arguments go to the suite, e.g.
#   bench/run.sh --concurrency 1,16 --seconds 4 --only "exact hit,stream"
# `bench/run.sh soak --minutes 10` runs the soak instead (RSS and Redis memory over time).
# `bench/run.sh --with-litellm ...` also installs the LiteLLM proxy (bench/litellm/setup.sh) and
# measures it side by side where it has the feature; once installed, it is always measured.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh >&2
cargo build --release --locked -p tollgate-cli -p tollgate-bench >&2
bin="${CARGO_TARGET_DIR:-target}/release/tollgate-bench"
if [ "${1:-}" = "soak" ]; then
  shift
  exec "$bin" soak "$@"
fi
litellm="bench/litellm/venv/bin/litellm"
if [ "${1:-}" = "--with-litellm" ]; then
  shift
  bench/litellm/setup.sh >&2
fi
if [ -x "$litellm" ]; then
  exec "$bin" suite --litellm "$litellm" "$@"
fi
exec "$bin" suite "$@"
