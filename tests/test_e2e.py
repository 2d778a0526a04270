"""The whole core loop from the command line, on a generated pool, with real models:
ingest -> seed labels -> train -> export (gates pass) -> score -> select (every strategy)
-> annotate -> retrain -> a new version is active and the pool is rescored."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from edge_al import acquisition
from edge_al.cli import main
from tests.helpers import write_shape_images

pytest.importorskip("torch")
pytestmark = pytest.mark.slow


def run(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    rc = main(list(args))
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out)


def test_core_loop_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path / "home")
    items = write_shape_images(tmp_path / "pool", 400, size=64)
    truth = {str(p): lab for p, lab in items}
    seed_list = tmp_path / "seed.txt"
    # 10 labels for each of the four classes
    per: dict[str, int] = {}
    seed = []
    for p, lab in items:
        if per.get(lab, 0) < 10:
            per[lab] = per.get(lab, 0) + 1
            seed.append(str(p))
    seed_list.write_text("\n".join(seed))
    g = ["--home", home, "--json", "-q"]
    assert run(capsys, *g, "ingest", "--labels-from-dirs", str(seed_list))["labeled"] == 40
    assert run(capsys, *g, "ingest", str(tmp_path / "pool"))["added"] == 360

    ckpt = run(capsys, *g, "train", "--image-size", "64", "--epochs", "6", "--seed", "1")["checkpoint"]
    exp = run(capsys, *g, "export", ckpt)
    assert exp["active"] == exp["version"] == "v0001"
    report = exp["report"]
    assert report["gates"], report
    for name, gate in report["gates"].items():
        assert gate.get("passed") is True, (name, gate)

    sc = run(capsys, *g, "score")
    assert sc["scored"] == 400 and sc["failed"] == []

    first = {}
    for strategy in acquisition.STRATEGIES:
        sel = run(capsys, *g, "select", "-n", "20", "--strategy", strategy)["selected"]
        assert len(sel) == 20 and not {r["path"] for r in sel} & set(seed)
        first[strategy] = sel

    decisions = tmp_path / "decisions.csv"
    with open(decisions, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "label", "action", "annotator"])
        for r in first["hybrid"]:
            lab = truth[r["path"]]
            w.writerow([r["sample_id"], lab, "accept" if lab == r["predicted"] else "correct", "expert"])
    ann = run(capsys, *g, "annotate", str(decisions))
    assert ann["written"] == 20 and ann["errors"] == []

    re = run(capsys, *g, "retrain", "--epochs", "4", "--tolerance", "1.0")
    assert re["version"] == "v0002" and re["promoted"] is True
    assert re["score"]["scored"] == 400 and re["score"]["version"] == "v0002"
    status = run(capsys, *g, "status")
    assert status["active_model"]["version"] == "v0002"
    assert status["labeled"] == 60 and status["scored_by_active"] == 400
    models = run(capsys, *g, "models")
    assert [v["version"] for v in models["versions"]] == ["v0001", "v0002"]
    assert models["versions"][1]["num_train_labels"] > models["versions"][0]["num_train_labels"]
