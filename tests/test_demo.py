"""The main job (`./scripts/demo` runs `edge-al demo`), small and fast: it builds its pool, trains,
exports, scores and prints a ranked selection; a second run picks up where the first stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_al.cli import main

pytest.importorskip("torch")
pytestmark = pytest.mark.slow


# a 2-epoch model may fail the INT8 agreement gate and publish FP32, with this warning: both are fine here
@pytest.mark.filterwarnings("ignore::export.convert.ExportGateWarning")
def test_demo_runs_the_main_job_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--home", str(tmp_path / "home"), "--json", "-q", "demo", "--per-class", "3", "--epochs", "2", "--image-size", "32", "-n", "7"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == "v0001"
    rows = doc["selected"]
    assert len(rows) == 7 and len({r["sample_id"] for r in rows}) == 7
    assert all(Path(r["path"]).exists() for r in rows)
    assert (tmp_path / "home" / "demo-pool" / "truth.csv").exists()
    assert main(args) == 0  # the second run reuses the model and the pool
    again = json.loads(capsys.readouterr().out)
    assert again["version"] == "v0001" and [r["sample_id"] for r in again["selected"]] == [r["sample_id"] for r in rows]
