#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers for the tests of durable records (each test creates a
# fresh database of its own on it and drops it after): Debian's server on 127.0.0.1:5432, or the
# one TOLLGATE_TEST_POSTGRES_URL names. Installs and starts Debian's server when it is missing or
# stopped. Safe to run again.
set -euo pipefail

url="${TOLLGATE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
answers() { psql "$url" -X -A -t -c 'SELECT 1' >/dev/null 2>&1; }

command -v psql >/dev/null 2>&1 && answers && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "ensure-postgres: need root (or sudo) to install or start PostgreSQL" >&2; exit 1; }
  sudo="sudo"
fi
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "installing PostgreSQL from Debian's packages" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
for cluster in $(pg_lsclusters -h 2>/dev/null | awk '{print $1 "/" $2}'); do
  $sudo pg_ctlcluster "${cluster%/*}" "${cluster#*/}" start 2>/dev/null || true
done
for _ in $(seq 1 60); do
  answers && exit 0
  sleep 0.5
done
echo "ensure-postgres: no PostgreSQL answers at $url (set TOLLGATE_TEST_POSTGRES_URL to one that lets its user create databases)" >&2
exit 1
