"""The main job (`./scripts/demo` runs `edge-al demo`), small and fast: it builds its pool, trains,
exports, scores and prints a ranked selection; a second run picks up where the first stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_al.cli import main
from edge_al.registry import Registry

pytest.importorskip("torch")
pytestmark = pytest.mark.slow


# a 2-epoch model may fail the INT8 agreement gate and publish FP32, with this warning: both are fine here
@pytest.mark.filterwarnings("ignore::export.convert.ExportGateWarning")
def test_demo_runs_the_main_job_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--home", str(tmp_path / "home"), "--json", "-q", "demo", "--per-class", "3", "--epochs", "2", "--image-size", "32", "-n", "7"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == "v0001"
    # it reports what it published and the gates, and they agree with the registry
    published = doc["published"]
    meta = Registry(tmp_path / "home" / "models").get("v0001").meta
    assert published["precision"] == meta["precision"]
    assert set(published["gates_passed"]) >= {"ir_parity", "int8_agreement", "int8_accuracy"}
    assert (published["precision"] == "int8") == all(published["gates_passed"].values())
    assert published["validation_note"] and "too few to trust" in published["validation_note"]  # 3 per class
    rows = doc["selected"]
    assert len(rows) == 7 and len({r["sample_id"] for r in rows}) == 7
    assert all(Path(r["path"]).exists() for r in rows)
    assert all(r["reason"]["text"] for r in rows)
    assert (tmp_path / "home" / "demo-pool" / "truth.csv").exists()
    assert main(args) == 0  # the second run reuses the model and the pool
    again = json.loads(capsys.readouterr().out)
    assert again["version"] == "v0001" and [r["sample_id"] for r in again["selected"]] == [r["sample_id"] for r in rows]
    assert again["published"] is None and again["scored"] == 0 and again["already_scored"] == 1797
    # said in words, not "scored 0 samples at 0 img/s"
    assert main([*args[:2], "-q", "demo", "-n", "3"]) == 0
    out = capsys.readouterr().out
    assert "every sample already scored by v0001" in out and "scored 0" not in out
    assert f"model v0001 ({published['precision'].upper()}) already active" in out


def test_demo_default_publishes_int8_with_every_gate_passed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What `./scripts/demo` runs, as it runs it (the default head on EfficientNet-Lite0 at 320 px)."""
    assert main(["--home", str(tmp_path / "home"), "-q", "demo", "-n", "3"]) == 0
    captured = capsys.readouterr()
    line = next(x for x in captured.out.splitlines() if x.startswith("[4/6]"))
    assert line.endswith("published INT8; gates: ir_parity pass, int8_agreement pass, int8_accuracy pass"), line
    assert "{" not in captured.out, "a raw dict in the demo's output"
    assert "Statistics collection" not in captured.out + captured.err, "NNCF's progress bars despite -q"
    assert "CUDA" not in captured.err
