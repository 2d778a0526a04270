#!/usr/bin/env bash
# Build (or refresh) the project's virtual environment in .venv with everything installed.
# Needs only python3 (3.10+). Re-runs are cheap: nothing is reinstalled while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.edge-al-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install --quiet -e '.[train,dev]' 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  .venv/bin/python -c "import edge_al, export, torch, openvino, nncf" # fail loudly if the install did not take
  echo "$want" > "$stamp"
fi
