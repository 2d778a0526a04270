#!/usr/bin/env bash
# Makes the browser test (tests/test_ui_browser.py) runnable: Debian's chromium and the python
# playwright package in .venv. Idempotent. Never runs `playwright install` (that downloads browser
# builds of its own); the test drives /usr/bin/chromium through executable_path instead.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  echo "== installing Debian's chromium"
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
fi

PY=.venv/bin/python
if [ ! -x "$PY" ]; then PY=python3; fi
if ! "$PY" -c "import playwright.sync_api" >/dev/null 2>&1; then
  echo "== installing playwright (python package only; the browser is Debian's chromium)"
  "$PY" -m pip install -q "playwright>=1.40"
fi
echo "browser: $(/usr/bin/chromium --version 2>/dev/null || echo missing); playwright: $("$PY" -c 'import importlib.metadata as m; print(m.version("playwright"))')"
