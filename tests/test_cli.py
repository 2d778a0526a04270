"""The CLI on a real tiny OpenVINO model (no training: that is tests/test_e2e.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from edge_al import acquisition
from edge_al.cli import main
from edge_al.registry import Registry
from tests.helpers import publish_tiny, write_digit_images


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(list(args))
    return rc, capsys.readouterr().out


@pytest.fixture
def scored_home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, list[tuple[Path, str]]]:
    home = tmp_path / "home"
    items = write_digit_images(tmp_path / "pool", 200)
    seed = tmp_path / "seed.txt"
    seed.write_text("\n".join(str(p) for p, _ in items[:40]))
    rc, _ = run(capsys, "--home", str(home), "-q", "ingest", "--labels-from-dirs", str(seed))
    assert rc == 0
    rc, _ = run(capsys, "--home", str(home), "-q", "ingest", str(tmp_path / "pool"))
    assert rc == 0
    publish_tiny(Registry(home / "models"), sorted({lab for _, lab in items}), dim=16)
    rc, out = run(capsys, "--home", str(home), "--json", "score")
    assert rc == 0 and json.loads(out)["scored"] == 200
    return home, items


@pytest.mark.parametrize("strategy", acquisition.STRATEGIES)
def test_select_every_strategy(
    scored_home: tuple[Path, list[tuple[Path, str]]], capsys: pytest.CaptureFixture[str], strategy: str, tmp_path: Path
) -> None:
    home, items = scored_home
    out_csv = tmp_path / "next.csv"
    rc, out = run(capsys, "--home", str(home), "--json", "select", "-n", "12", "--strategy", strategy, "--csv", str(out_csv))
    assert rc == 0
    doc = json.loads(out)
    rows = doc["selected"]
    assert len(rows) == 12 and [r["rank"] for r in rows] == list(range(1, 13))
    labeled = {str(p) for p, _ in items[:40]}
    assert not labeled & {r["path"] for r in rows}, "a labeled sample was selected"
    assert len({r["sample_id"] for r in rows}) == 12
    with open(out_csv, newline="") as f:
        assert [int(r["sample_id"]) for r in csv.DictReader(f)] == [r["sample_id"] for r in rows]
    # deterministic with the seed
    rc, again = run(capsys, "--home", str(home), "--json", "select", "-n", "12", "--strategy", strategy)
    assert [r["sample_id"] for r in json.loads(again)["selected"]] == [r["sample_id"] for r in rows]


def test_human_output_and_status(scored_home: tuple[Path, list[tuple[Path, str]]], capsys: pytest.CaptureFixture[str]) -> None:
    home, _ = scored_home
    rc, out = run(capsys, "--home", str(home), "select", "-n", "3")
    assert rc == 0 and "rank" in out and "guessed" in out and "reason" in out
    rc, out = run(capsys, "--home", str(home), "--json", "status")
    doc = json.loads(out)
    assert doc["pool_size"] == 200 and doc["labeled"] == 40 and doc["unlabeled"] == 160
    assert doc["active_model"]["version"] == "v0001" and doc["scored_by_active"] == 200
    assert sum(doc["labeled_per_class"].values()) == 40


def test_annotate_commits_valid_rows_and_reports_invalid(
    scored_home: tuple[Path, list[tuple[Path, str]]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    home, items = scored_home
    unl = items[100:104]
    f = tmp_path / "decisions.csv"
    with open(f, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "action", "annotator"])
        w.writerow([str(unl[0][0]), unl[0][1], "correct", "eve"])
        w.writerow([str(unl[1][0]), "", "accept", "eve"])  # takes the model's guess
        w.writerow([str(unl[2][0]), "", "reject", "eve"])
        w.writerow(["/no/such/file.png", "d1", "correct", "eve"])
        w.writerow([str(unl[3][0]), "d99", "correct", "eve"])
        w.writerow([str(unl[3][0]), "d1", "maybe", "eve"])
    rc, out = run(capsys, "--home", str(home), "--json", "annotate", str(f))
    doc = json.loads(out)
    assert rc != 0
    assert doc["written"] == 3 and [e["row"] for e in doc["errors"]] == [4, 5, 6]
    reasons = " | ".join(e["reason"] for e in doc["errors"])
    assert "ingest it first" in reasons and "Unknown label 'd99'" in reasons and "action must be one of" in reasons
    rc, out = run(capsys, "--home", str(home), "--json", "status")
    assert json.loads(out)["labeled"] == 42 and json.loads(out)["rejected"] == 1
    # the same file again: nothing new, same errors
    rc, out = run(capsys, "--home", str(home), "--json", "annotate", str(f))
    assert json.loads(out)["written"] == 0 and json.loads(out)["unchanged"] == 3
    js = tmp_path / "d.json"
    js.write_text(json.dumps([{"sample_id": 1, "label": items[0][1], "action": "correct"}, "junk"]))
    rc, out = run(capsys, "--home", str(home), "--json", "annotate", str(js))
    assert json.loads(out)["errors"][0]["row"] == 2


def test_models_promote_rollback(scored_home: tuple[Path, list[tuple[Path, str]]], capsys: pytest.CaptureFixture[str]) -> None:
    home, items = scored_home
    publish_tiny(Registry(home / "models"), sorted({lab for _, lab in items}), dim=16, seed=5, promote=False)
    rc, out = run(capsys, "--home", str(home), "--json", "models")
    doc = json.loads(out)
    assert doc["active"] == "v0001" and [v["version"] for v in doc["versions"]] == ["v0001", "v0002"]
    assert run(capsys, "--home", str(home), "--json", "promote", "v0002")[0] == 0
    rc, out = run(capsys, "--home", str(home), "--json", "score")
    assert json.loads(out)["scored"] == 200  # a new version rescores the whole pool
    rc, out = run(capsys, "--home", str(home), "--json", "rollback")
    assert json.loads(out)["active"] == "v0001"
    rc, err = main(["--home", str(home), "promote", "v0042"]), capsys.readouterr().err
    assert rc == 1 and "does not exist" in err


def test_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--home", str(tmp_path / "h"), "score"])
    assert rc == 1 and "No model version is active" in capsys.readouterr().err
    rc = main(["--home", str(tmp_path / "h"), "annotate", str(tmp_path / "nope.csv")])
    assert rc == 1 and "Cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--home", str(tmp_path / "h"), "select", "-n", "0"])
    with pytest.raises(SystemExit):
        main(["--home", str(tmp_path / "h"), "select", "--strategy", "bogus"])
