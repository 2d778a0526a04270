#!/usr/bin/env bash
# Makes the PostgreSQL half of the store tests runnable: Debian's postgresql-15 server binaries
# (initdb, pg_ctl, postgres; the tests start their own throwaway server in a temporary folder, see
# export/tools/postgres.py). Idempotent. No cluster of the package's own is
# created or started: nothing listens on 5432 because of this script.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "== installing Debian's postgresql-15 (server binaries only; no default cluster)"
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO mkdir -p /etc/postgresql-common
  if ! grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf; then
    echo "create_main_cluster = false" | $SUDO tee -a /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends postgresql-15
fi

bindir=$(dirname "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
echo "postgresql: $("$bindir/postgres" --version) (psycopg comes with the dev extra: scripts/bootstrap.sh)"
