"""Smoke tests of the speed benchmark (``edge-al bench``): structure and consistency, never speed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_al.config import Settings
from edge_al.pool import ingest
from edge_al.registry import Registry
from edge_al.store import open_store
from export.tools import bench
from tests.helpers import publish_tiny

ROOT = Path(__file__).resolve().parents[1]


def _tiny_workspace(tmp_path: Path, n: int = 64) -> Settings:
    pool = bench.generate_jpegs(tmp_path / "pool", n, size=(96, 72))
    settings = Settings(home=tmp_path / "home")
    store = open_store(settings)
    try:
        rep = ingest(store, settings, [tmp_path / "pool"])
        assert len(rep.added) == len(pool) == n  # generated images are distinct
    finally:
        store.close()
    publish_tiny(Registry(settings.registry_dir), ["a", "b", "c"], size=32, dim=16)
    return settings


def test_generated_jpegs_are_distinct_and_reused(tmp_path: Path) -> None:
    paths = bench.generate_jpegs(tmp_path, 5, size=(64, 48))
    assert len({p.read_bytes() for p in paths}) == 5
    mtimes = [p.stat().st_mtime_ns for p in paths]
    again = bench.generate_jpegs(tmp_path, 6, size=(64, 48))
    assert [p.stat().st_mtime_ns for p in again[:5]] == mtimes and again[5].exists()


def test_precision_names_from_benchmark_app() -> None:
    assert bench._short_precision("<Type: 'bfloat16'>") == "bf16"
    assert bench._short_precision("<Type: 'float32'>") == "f32"
    assert bench._short_precision("f16") == "f16"


def test_bench_rows_are_complete_finite_and_consistent(tmp_path: Path) -> None:
    settings = _tiny_workspace(tmp_path)
    doc = bench.run_bench(work=tmp_path / "work", home=settings.home, batch=8, seconds=1)
    rows = {r["key"]: r for r in doc["rows"]}
    assert list(rows) == list(bench.ROW_KEYS)
    for r in rows.values():
        assert r["path"]
        if r["skipped"]:
            assert r["images_per_s"] is None and r["ratio_to_ceiling"] is None and len(r["skipped"]) > 10
        else:
            assert math.isfinite(r["images_per_s"]) and r["images_per_s"] > 0
            assert r["ratio_to_ceiling"] == pytest.approx(r["images_per_s"] / rows["ceiling"]["images_per_s"], rel=2e-3, abs=2e-3)
    # the tiny IR has no checkpoint: no torch model, so those rows say why
    for key in ("torch_eager", "onnxruntime"):
        assert "checkpoint" in rows[key]["skipped"]
    for key in ("ceiling", "first_pass", "cached", "fp32_f32", "fp32_default", "decode_only"):
        assert rows[key]["skipped"] is None, rows[key]
    assert rows["ceiling"]["ratio_to_ceiling"] == 1.0
    assert rows["fp32_f32"]["precision"] == "f32"
    assert rows["first_pass"]["details"]["scored"] == rows["cached"]["details"]["scored"] == 64
    t = doc["targets"]["cached_vs_ceiling"]
    assert t["value"] == pytest.approx(rows["cached"]["images_per_s"] / rows["ceiling"]["images_per_s"], rel=2e-3, abs=6e-4)
    assert doc["targets"]["cached_vs_torch_eager"]["met"] is None
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["openvino"]
    # the pool is fully scored again afterwards, and the outputs render
    store = open_store(settings)
    assert len(store.scored_ids("v0001")) == 64
    store.close()
    jpath, mpath = bench.write_report(doc, tmp_path / "out", command="edge-al bench --images 64")
    assert json.loads(jpath.read_text())["rows"] == doc["rows"]
    md = mpath.read_text()
    assert md.count("\n| ") >= len(bench.ROW_KEYS) + len(bench.TARGETS) and "OpenVINO" in md
    assert "cached_vs_ceiling" in bench.render_table(doc)


def test_bench_verb_is_registered() -> None:
    out = subprocess.run([sys.executable, "-m", "edge_al", "bench", "--help"], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "--images" in out.stdout and "--seconds" in out.stdout


@pytest.mark.slow
def test_torch_and_onnxruntime_rows_run_a_real_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from export.train import train

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    res = train(images, np.array([0, 1] * 4), ["a", "b"], arch="mobilenet_v3_small", image_size=32, epochs=1, batch_size=4, progress=False)
    ck = res.save_checkpoint(tmp_path / "ck.pt")
    eager = bench.torch_eager(ck, batch=4, seconds=0.5)
    assert eager["images_per_s"] > 0 and eager["iterations"] >= 3 and eager["precision"] == "f32"
    onnx_path = bench.onnx_model(ck, tmp_path / "m.onnx")
    assert onnx_path.stat().st_size > 0 and bench.onnx_model(ck, onnx_path) == onnx_path
    ort = bench.onnxruntime_cpu(onnx_path, batch=4, size=32, seconds=0.5)
    assert ort["images_per_s"] > 0 and math.isfinite(ort["images_per_s"])
