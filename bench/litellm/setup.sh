#!/usr/bin/env bash
# Installs the LiteLLM proxy (pinned, in a venv beside this script) for side-by-side cells in
# `bench/run.sh`. LiteLLM 1.74.9 with its runtime dependencies pinned to their mid-2025 releases
# (constraints.txt); a later 1.x release on PyPI was reported compromised. Safe to run again.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ ! -x "$here/venv/bin/litellm" ]; then
  python3 -m venv "$here/venv"
  "$here/venv/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==1.74.9" -c "$here/constraints.txt"
fi
"$here/venv/bin/litellm" --version 2>/dev/null | grep -m1 Version || true
