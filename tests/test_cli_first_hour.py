"""What a new user trips on in the first hour (issue 13): global options after the verb, help with
defaults, hints that keep --home, errors before side effects, an honest selection table, figures from a
small validation set labelled as such."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest

from edge_al.cli import build_parser, main
from edge_al.figures import MIN_VAL_PER_CLASS, gate_summary, validation_note
from edge_al.registry import Registry
from tests.helpers import publish_tiny, write_digit_images


def _verbs(parser: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, p in action.choices.items():
                out += [(f"{prefix}{name}", p), *_verbs(p, f"{prefix}{name} ")]
    return out


@pytest.fixture
def scored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    home = tmp_path / "home"
    items = write_digit_images(tmp_path / "pool", 120)
    seed = tmp_path / "seed.txt"
    seed.write_text("\n".join(str(p) for p, _ in items[:30]))
    assert main(["ingest", "--labels-from-dirs", str(seed), "--home", str(home), "-q"]) == 0
    assert main(["ingest", str(tmp_path / "pool"), "-q", "--home", str(home)]) == 0
    publish_tiny(Registry(home / "models"), sorted({lab for _, lab in items}), dim=16)
    assert main(["score", "--home", str(home), "-q"]) == 0
    capsys.readouterr()
    return home


def test_every_verb_option_has_help_and_shows_its_default() -> None:
    parser = build_parser()
    verbs = _verbs(parser)
    assert {"ingest", "train", "select", "score", "retrain", "demo", "simulate", "bench", "serve", "keys add"} <= {v for v, _ in verbs}
    missing, no_default = [], []
    for verb, p in verbs:
        text = p.format_help()
        formatter = p._get_formatter()
        for action in p._actions:
            if not action.option_strings or "-h" in action.option_strings:
                continue
            if not (action.help or "").strip():
                missing.append(f"{verb} {action.option_strings[0]}")
            d = action.default
            shown = formatter._get_help_string(action)  # what --help prints, before %-formatting
            if d is not None and d is not False and d is not argparse.SUPPRESS and "default" not in shown:
                no_default.append(f"{verb} {action.option_strings[0]}")
        assert "--home" in text and "--json" in text, f"{verb}: global options missing from its help"
    assert not missing, f"options without help: {missing}"
    assert not no_default, f"options whose help hides the default: {no_default}"
    # the formatter appends "(default: X)" to these; check it did for a few named in the issue
    train_help = " ".join(dict(verbs)["train"].format_help().split())
    for snippet in ("(default: 32)", "(default: 0)"):
        assert snippet in train_help
    # --epochs' default depends on the mode, so its help states both
    assert "(default 15; 4 fine-tuning packaged pretrained weights" in train_help
    select_help = " ".join(dict(verbs)["select"].format_help().split())
    assert "(default: 20)" in select_help and "(default: hybrid)" in select_help
    assert "(default: CPU)" in dict(verbs)["score"].format_help() and "(default: 8)" in dict(verbs)["score"].format_help()


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_before_or_after_the_verb(scored: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    opts = ["--home", str(scored), "--json"]
    argv = [*opts, "status"] if where == "before" else ["status", *opts]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["pool_size"] == 120
    # mixed: one before, one after; -q after the verb too
    assert main(["--home", str(scored), "select", "-n", "3", "--json", "-q"]) == 0
    assert len(json.loads(capsys.readouterr().out)["selected"]) == 3


def test_ingest_of_a_missing_path_fails_before_creating_a_workspace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "fresh"
    with pytest.raises(SystemExit) as exc:
        main(["ingest", str(tmp_path / "nonexistent"), "--home", str(home)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "a folder of images" in err
    assert not home.exists(), "a failed ingest created a workspace"


def test_train_hint_keeps_the_home_the_user_passed(scored: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["export", "--home", str(scored)])
    err = capsys.readouterr().err
    assert rc == 1 and f"edge-al --home {scored} train" in err


def test_select_table_is_honest(scored: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_csv = tmp_path / "next.csv"
    assert main(["select", "-n", "8", "--strategy", "margin", "--home", str(scored), "--csv", str(out_csv)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert "1-margin" in header and "margin" not in header and "reason" in header
    assert "rows in score order, highest first" in out
    assert main(["select", "-n", "8", "--strategy", "margin", "--home", str(scored), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["selected"]
    # the column named 1-margin holds 1 - (p1 - p2), recomputed from the probabilities
    col = header.index("1-margin")
    printed = [float(line.split()[col]) for line in out.splitlines()[1:9]]
    assert printed == pytest.approx([r["components"]["margin"] for r in rows], abs=1e-4)
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True), "margin rows are said to be in score order"
    assert all(r["reason"]["code"] and r["reason"]["text"] for r in rows)
    with open(out_csv, newline="") as f:
        first = next(csv.DictReader(f))
    assert "1-margin" in first and "margin" not in first and first["reason"]
    # the default strategy says what order its rows are in
    assert main(["select", "-n", "6", "--home", str(scored)]) == 0
    out = capsys.readouterr().out
    assert "rows in pick order" in out or "round-robin" in out


def test_reason_names_uncertain_and_rare_picks() -> None:
    from edge_al.selection import Candidate, pick_reason

    c = Candidate(1, 7, "p.png", "Blowhole", 0.41, 1.0, {"margin": 0.94}, {"Blowhole": 0.41, "Free": 0.35, "Crack": 0.24})
    r = pick_reason(c, {"Free": 30, "Blowhole": 2, "Crack": 10}, ["Blowhole", "Crack", "Free"], "margin")
    assert r["codes"] == ["uncertain", "rare predicted class"] and "Blowhole 0.41 vs Free 0.35" in r["text"]
    sure = Candidate(17, 8, "q.png", "Free", 1.0, 0.2, {"margin": 0.0, "cluster_size": 34.0}, {"Free": 1.0, "Crack": 0.0})
    r = pick_reason(sure, {"Free": 30, "Crack": 10}, ["Crack", "Free"], "hybrid")
    assert r["codes"] == ["unlike anything labeled"] and "34" in r["text"]


def test_small_validation_figures_are_labelled() -> None:
    assert validation_note(6, 6) is not None and "too few to trust" in (validation_note(6, 6) or "")
    assert validation_note(MIN_VAL_PER_CLASS * 6, 6) is None
    assert validation_note(MIN_VAL_PER_CLASS * 6 - 1, 6) is not None
    assert gate_summary({"gates": {"ir_parity": {"passed": True}, "int8_agreement": {"passed": False}}}) == (
        "ir_parity pass, int8_agreement FAIL"
    )


def test_status_labels_a_small_validation_set(scored: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = Registry(scored / "models")
    mv = reg.active()
    assert mv is not None
    meta = dict(mv.meta)
    meta["metrics"] = {"published": {"accuracy": 0.5, "balanced_accuracy": 0.5, "n": 6}}
    (mv.path / "meta.json").write_text(json.dumps(meta))
    assert main(["status", "--home", str(scored)]) == 0
    out = capsys.readouterr().out
    assert "balanced 0.500" in out and "6 validation images" in out and "too few to trust" in out
    assert main(["status", "--home", str(scored), "--json"]) == 0
    v = json.loads(capsys.readouterr().out)["active_model"]["validation"]
    assert v == {"n": 6, "trusted": False, "note": v["note"]} and "too few" in v["note"]


def test_train_next_hint_keeps_home_and_models(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_al.lifecycle as lifecycle

    ckpt = tmp_path / "h" / "checkpoints" / "c.pt"

    class FakeWorkflow:
        def train_from_store(self, *a: object, **kw: object) -> Path:
            return ckpt

    monkeypatch.setattr(lifecycle, "workflow", lambda: FakeWorkflow())
    assert main(["train", "--home", str(tmp_path / "h"), "--models", str(tmp_path / "m"), "-q"]) == 0
    out = capsys.readouterr().out
    assert f"next: edge-al --home {tmp_path / 'h'} --models {tmp_path / 'm'} export {ckpt}" in out


def test_train_no_refit_reaches_the_workflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_al.lifecycle as lifecycle

    seen: list[object] = []

    class FakeWorkflow:
        def train_from_store(self, *a: object, **kw: object) -> Path:
            seen.append(kw["refit"])
            return tmp_path / "c.pt"

    monkeypatch.setattr(lifecycle, "workflow", lambda: FakeWorkflow())
    for extra in ([], ["--no-refit"]):
        assert main(["train", "--home", str(tmp_path / "h"), "-q", *extra]) == 0
    assert seen == [None, False]  # None: the workflow's default, a head refitted on every label


def test_unknown_labels_in_a_first_round_say_what_to_do(scored: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "first.csv"
    f.write_text("sample_id,label,action\n100,Blowhole,correct\n")
    assert main(["annotate", str(f), "--home", str(scored)]) == 3
    out = capsys.readouterr().out
    assert f"edge-al --home {scored} annotate --create-labels {f}" in out
    assert main(["annotate", "--create-labels", str(f), "--home", str(scored)]) == 0


def test_readme_says_what_scripts_test_installs_as_root() -> None:
    repo = Path(__file__).resolve().parents[1]
    setup = (repo / "scripts" / "setup-browser.sh").read_text()
    assert "setup-browser.sh" in (repo / "scripts" / "test").read_text() and "apt-get install" in setup
    readme = " ".join((repo / "README.md").read_text().split())
    assert "installs Debian's `chromium` package with `apt-get`" in readme and "as root" in readme


def test_retrain_says_why_the_active_models_figure_differs_from_status() -> None:
    from edge_al.lifecycle import _split_note

    meta = {"labels": ["a", "b"], "metrics": {"published": {"accuracy": 0.8, "balanced_accuracy": 0.75, "n": 13}}}
    note = _split_note(meta, 0.55)
    assert "`status` showed 0.750" in note and "its own 13 validation samples" in note
    assert _split_note(meta, 0.75) == ""  # the same figure: nothing to explain


def test_hints_keep_the_workspace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "ws"
    assert main(["keys", "list", "--home", str(home)]) == 0
    assert f"run `edge-al --home {home} keys add --role admin`" in capsys.readouterr().out
    assert main(["models", "--home", str(home)]) == 0
    assert f"`edge-al --home {home} train`" in capsys.readouterr().out
