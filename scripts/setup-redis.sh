#!/usr/bin/env bash
# Makes the Redis tests (tests/test_jobs_redis.py) runnable: Debian's redis-server, and the redis
# Python package in .venv. Idempotent. The tests start their own redis-server (a temporary folder,
# a free port on 127.0.0.1); this script never starts or enables the system service.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing Debian's redis-server"
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends redis-server
fi

PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  echo "no .venv yet: run scripts/bootstrap.sh (it installs the redis package with the dev extra)"
  exit 0
fi
if ! "$PY" -c "import redis" >/dev/null 2>&1; then
  echo "== installing the redis Python package into .venv"
  "$PY" -m pip install -q "redis>=5,<9"
fi
echo "redis-server: $(redis-server --version 2>/dev/null | cut -d' ' -f3 || echo missing); redis-py: $("$PY" -c 'import redis; print(redis.__version__)')"
