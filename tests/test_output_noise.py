"""Each line of output once, for people (issue 13): export progress lines through one channel, gates
in one concise line (raw dicts only with --json), a failed gate's warning once."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edge_al.cli import main

convert = pytest.importorskip("export.convert")


def test_export_progress_line_goes_to_stderr_or_the_log_never_both(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="export.convert"):
        convert._say(True, "[v0001] gate ir_parity: pass")
    assert capsys.readouterr().err.count("gate ir_parity") == 1 and not caplog.records
    with caplog.at_level(logging.INFO, logger="export.convert"):  # -v, or a server that logs INFO
        convert._say(True, "[v0001] gate ir_parity: pass")
    assert "gate ir_parity" not in capsys.readouterr().err
    assert [r.getMessage() for r in caplog.records] == ["[v0001] gate ir_parity: pass"]


def test_int8_line_names_the_figure_the_gate_decides_on() -> None:
    agreement = {"passed": True, "top1_agreement": 0.9, "confident_agreement": 118 / 120, "confident_n": 120, "min_agreement": 0.99,
                 "agreement_floor": 0.8, "confident_flips": 2, "binomial_p": 0.338}  # fmt: skip
    from export.gates import int8_line

    accuracy = {"passed": True, "accuracy_drop": 0.05, "max_drop": 0.01, "lost": 2, "won": 0, "n": 40, "sign_test_p": 0.25, "alpha": 0.05}
    line = int8_line("quantize", agreement, accuracy)
    # was "agreement pass 0.9000 (min 0.99)": a pass below its own minimum
    assert "0.9833 on the 120 images FP32 is decided about (min 0.99; 2 flipped, binomial p=0.338)" in line
    assert "0.9000 on all (min 0.8)" in line
    assert "drop=+0.0500 (max 0.01; 2 lost, 0 won of 40, sign test p=0.250" in line


def test_cli_shows_a_warning_once_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_al.lifecycle as lifecycle

    report: dict[str, Any] = {
        "fallback": True,
        "gates": {"ir_parity": {"passed": True, "max_abs_prob_diff": 1e-6}, "int8_agreement": {"passed": False, "top1_agreement": 0.5}},
    }
    mv = SimpleNamespace(version="v0001", meta={"precision": "fp32", "labels": ["a", "b"], "metrics": {"published": {"n": 40}}})

    class FakeWorkflow:
        def export_from_store(self, *a: object, **kw: object) -> tuple[Any, dict[str, Any]]:
            warnings.warn("INT8 model v0001 failed its gates", convert.ExportGateWarning, stacklevel=2)
            return mv, report

    monkeypatch.setattr(lifecycle, "workflow", lambda: FakeWorkflow())
    monkeypatch.setattr("edge_al.registry.Registry.promote", lambda self, v: None)
    monkeypatch.setattr("edge_al.registry.Registry.active_version", lambda self: "v0001")
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["export", str(ckpt), "--home", str(tmp_path / "h")]) == 0
    out, err = capsys.readouterr()
    assert err.count("failed its gates") == 1 and "edge-al: warning: INT8 model v0001 failed its gates" in err
    assert "warnings.warn" not in err  # not Python's file:line + source form
    assert out.splitlines()[0] == (
        "published v0001 (fp32) [FALLBACK: INT8 failed its gates]; gates: ir_parity pass, int8_agreement FAIL; active: v0001"
    )
    assert "{" not in out  # no raw dicts for people
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["export", str(ckpt), "--home", str(tmp_path / "h"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["report"]["gates"]["ir_parity"]["max_abs_prob_diff"] == 1e-6


def test_project_license_is_an_spdx_string() -> None:
    """A table (``license = {text = ...}``) made setuptools print a deprecation warning three times per install."""
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert isinstance(project["license"], str) and "License ::" not in " ".join(project.get("classifiers", []))
