"""The README's "typical round" runs as written (issue 13): its bash block is read from README.md and
run line by line, with `set -e`, in a folder laid out as after `./scripts/demo` (a `.venv` whose `bin`
holds `edge-al`, the demo pool in `edge-al-home/demo-pool`, and `scripts/`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def typical_round() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("A typical round")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert block is not None, "the README has no bash block after 'A typical round'"
    return block.group(1)


def test_readme_round_names_no_bare_command_before_the_venv_is_active() -> None:
    lines = [x for x in typical_round().splitlines() if x.strip()]
    assert lines[0].startswith("source .venv/bin/activate"), "edge-al is not on PATH until the venv is active"
    assert all(x.split()[0] in {"source", "export", "edge-al", "python"} for x in lines)


def test_readme_typical_round_runs_as_written(tmp_path: Path) -> None:
    from export.tools.demo import write_digits_pool

    bindir = Path(sys.executable).parent
    if not (bindir / "edge-al").exists():
        pytest.skip(f"no edge-al console script beside {sys.executable}: install the project (pip install -e .)")
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    # what `source .venv/bin/activate` does that matters here: the venv's bin first on PATH
    (venv_bin / "activate").write_text(f'export PATH="{bindir}:$PATH"\n')
    (tmp_path / "scripts").symlink_to(REPO / "scripts")
    # the pool ./scripts/demo leaves, as the README says; the same images as tests/test_demo.py's, so
    # the backbone (its INT8 calibration draws from the pool) comes from the session's backbone cache
    write_digits_pool(tmp_path / "edge-al-home" / "demo-pool")
    script = "set -euo pipefail\n" + typical_round()
    env = {k: v for k, v in os.environ.items() if k not in ("EDGE_AL_HOME", "EDGE_AL_MODELS")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")  # this checkout's code, not another install
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"the README's round failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = proc.stdout
    assert "added 1797" in out and "written 30" in out
    assert re.search(r"published v0001 \((int8|fp32)\)", out), out[-2000:]
    assert re.search(r"^v0002: (promoted|not promoted) ", out, re.M), out[-2000:]
    assert re.search(r"^active model: v000[12] ", out, re.M), out[-2000:]
    assert (tmp_path / "round1" / "edge-al.sqlite3").exists()
