#!/usr/bin/env bash
# Installs what only the tests need: the Python packages the end-to-end tests run (the official
# `openai` and `anthropic` clients, schemathesis), from PyPI, into a virtual environment of their
# own (`.venv` at the workspace root, or TOLLGATE_TEST_VENV), never into the system's Python
# (Debian's refuses it); and Debian's Chromium with its ChromeDriver for the dashboard's tests.
# The tests find their tools there. Safe to run again.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${TOLLGATE_TEST_VENV:-$here/.venv}"

command -v python3 >/dev/null 2>&1 || { echo "install-test-deps: python3 not found (the end-to-end tests use it)" >&2; exit 1; }
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  # Debian splits venv out of python3.
  echo "installing from Debian's packages: python3-venv" >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
[ -x "$venv/bin/python3" ] || python3 -m venv "$venv"
if ! "$venv/bin/python3" -c 'import openai, anthropic, schemathesis' >/dev/null 2>&1; then
  echo "installing the Python test dependencies from PyPI into $venv" >&2
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check -r "$here/tests/python/requirements.txt"
fi

# The dashboard's tests drive Debian's Chromium through its ChromeDriver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "installing from Debian's packages: chromium chromium-driver (the dashboard's browser tests)" >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
