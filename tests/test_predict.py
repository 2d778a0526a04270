"""Offline batch scoring: the typed result, the Python API, and ``edge-al predict`` to files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from edge_al.acquisition import uncertainty_scores
from edge_al.cli import main
from edge_al.config import Settings
from edge_al.engine import Engine
from edge_al.errors import Conflict, ImageError, InvalidInput, NoActiveModel
from edge_al.images import decode_resized
from edge_al.predict import Predictor, expand_inputs, resolve_model
from edge_al.predict_cli import run_predict
from edge_al.predict_io import ParquetSink, schema
from edge_al.registry import Registry
from edge_al.results import Predictions
from edge_al.store import open_store
from tests.api_support import LABELS, build_workspace
from tests.helpers import publish_tiny, write_jpegs

SIX = ["a", "b", "c", "d", "e", "f"]


@pytest.fixture
def pool(tmp_path: Path, registry: Registry) -> list[Path]:
    publish_tiny(registry, SIX, dim=16)
    paths = write_jpegs(tmp_path / "pool" / "sub", 30, size=(80, 60))
    paths += write_jpegs(tmp_path / "pool", 10, size=(40, 30), seed=1)
    return paths


def _cli(settings: Settings, *args: str) -> int:
    return main(["--home", str(settings.home), "-q", *args])


# -- the typed result ----------------------------------------------------------------------------
def test_engine_predict_is_a_typed_result_over_infer(registry: Registry) -> None:
    mv = publish_tiny(registry, SIX, dim=16)
    eng = Engine(mv.xml, batch=4, precision="f32")
    imgs = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    probs, emb = eng.infer(imgs)
    preds = eng.predict(imgs)
    assert len(preds) == 5 and preds.version == "v0001" and preds.labels == tuple(SIX)
    np.testing.assert_allclose(preds.probs, probs, atol=1e-6)
    np.testing.assert_allclose(preds.embedding, emb, atol=1e-6)
    idx, val = preds.top_k(4)
    assert idx.shape == (5, 4) and (np.diff(val, axis=1) <= 0).all(), "top-k is best first"
    np.testing.assert_array_equal(idx[:, 0], probs.argmax(1))
    np.testing.assert_allclose(val[:, 0], probs.max(1))
    for name, values in uncertainty_scores(probs).items():
        np.testing.assert_allclose(preds.uncertainty()[name], values, atol=1e-6)
    assert preds.scores()["fre"] is None and preds.scores()["knn"] is None
    one = preds[3]
    assert one.label == SIX[int(probs[3].argmax())] and one.label_index == int(probs[3].argmax())
    assert one.confidence == pytest.approx(float(probs[3].max()), abs=1e-6)
    assert [lab for lab, _ in one.top_k] == [SIX[i] for i in idx[3, :3]]
    assert one.scores["margin"] == pytest.approx(float(uncertainty_scores(probs)["margin"][3]), abs=1e-6)
    assert one.model_version == "v0001" and one.embedding is not None and one.embedding.shape == (16,)
    # a model that names fewer classes than it outputs: the index as text, as the service does
    short = Predictions(np.array([[0.1, 0.2, 0.7]], np.float32), np.zeros((1, 2), np.float32), ("a",), "v9")
    assert short.label_names == ["2"] and short[0].top_k[-1] == ("a", pytest.approx(0.1))


# -- which model, which images -------------------------------------------------------------------
def test_resolve_model_by_name_folder_registry_and_active(settings: Settings, registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(NoActiveModel, match=r"no model registry|No model version"):
        resolve_model(None, Settings(home=tmp_path / "nowhere"))
    assert not (tmp_path / "nowhere").exists(), "resolving must create nothing"
    publish_tiny(registry, SIX)
    second = publish_tiny(registry, SIX, seed=1, promote=False)
    assert resolve_model(None, settings).version == "v0001"
    assert resolve_model("v0002", settings).path == second.path
    assert resolve_model(str(second.path), Settings(home=tmp_path / "other")).version == "v0002"
    assert resolve_model(str(registry.root), Settings(home=tmp_path / "other")).version == "v0001"
    with pytest.raises(InvalidInput, match="version name"):
        resolve_model("latest-please", settings)


def test_expand_inputs_files_folders_globs_lists(pool: list[Path], tmp_path: Path) -> None:
    root = tmp_path / "pool"
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two of them\n{pool[0]}\npool/sub/{pool[1].name}\nnot-there.jpg\n")
    got = list(expand_inputs([str(root / "sub"), str(root / "*.jpg"), f"@{listing}", str(root / "**" / "gen_000002.jpg")]))
    paths = [p for p, problem in got if problem is None]
    assert paths[:30] == [str(p) for p in pool[:30]], "a folder is recursive and sorted"
    assert paths[30:40] == [str(p) for p in pool[30:]], "a glob"
    assert paths[40:42] == [str(pool[0]), str(pool[1])], "a list file, relative to itself"
    assert [p for p, problem in got if problem] == [str(tmp_path / "not-there.jpg")]
    assert sorted(paths[42:]) == sorted([str(pool[2]), str(pool[32])]), "a recursive glob"
    assert list(expand_inputs([str(tmp_path / "*.nothing")])) == [(str(tmp_path / "*.nothing"), "no file matches the pattern")]


# -- the Python API ------------------------------------------------------------------------------
def test_python_api_paths_bytes_arrays_one_or_many(settings: Settings, pool: list[Path]) -> None:
    model = Predictor.load(None, home=settings.home)
    by_path = model.predict(pool[0])
    by_bytes = model.predict(pool[0].read_bytes())
    by_array = model.predict(decode_resized(pool[0].read_bytes(), (32, 32), 80, 60))  # the service's decode, done by the caller
    assert by_path.source == str(pool[0]) and by_bytes.source is None
    np.testing.assert_allclose(by_path.probs, by_bytes.probs, atol=1e-6)
    np.testing.assert_allclose(by_path.probs, by_array.probs, atol=1e-6)
    many = model.predict([pool[1], pool[2].read_bytes()], top_k=2, embedding=True)
    assert isinstance(many, list) and len(many) == 2 and all(len(r.top_k) == 2 and r.embedding is not None for r in many)
    assert model.predict([]) == []
    with pytest.raises(ImageError, match="truncated or corrupt"):
        model.predict(pool[0].read_bytes()[:200])
    with pytest.raises(InvalidInput, match="uint8"):
        model.predict(np.zeros((4, 4), np.float32))
    results = list(model.predict_files([str(pool[0].parent.parent), str(pool[0].parent / "missing.jpg")]))
    assert len(results) == 41 and sum(r.error is not None for r in results) == 1
    ok = {r.path: r.prediction for r in results if r.prediction is not None}
    np.testing.assert_allclose(ok[str(pool[0])].probs, by_path.probs, atol=1e-6)


def test_python_api_equals_the_service(tmp_path: Path) -> None:
    """Same image, same version: /v1/score and Predictor agree on label, top-k, uncertainty and novelty."""
    from edge_al.api import create_app

    settings, pairs = build_workspace(tmp_path, n=30)
    store = open_store(settings)
    for k, sid in enumerate(store.sample_ids().tolist()[:12]):
        store.add_annotation(int(sid), "correct", LABELS[k % 10], "ann")
    store.close()
    app = create_app(settings, {"AUTH_REQUIRED": False, "START_MODEL": True})
    svc = app.extensions["edge_al"]
    try:
        assert svc.holder.build_novelty("v0001") is not None
        data = pairs[20][0].read_bytes()
        body = app.test_client().post("/v1/score?top_k=3", data=data, content_type="image/png").get_json()
    finally:
        svc.stop()
        svc.store.close()
    (served,) = body["results"]
    mine = Predictor.load("v0001", home=settings.home).predict(data, top_k=3)
    assert mine.label == served["label"] and mine.model_version == served["model_version"] == "v0001"
    assert [lab for lab, _ in mine.top_k] == [t["label"] for t in served["top_k"]]
    np.testing.assert_allclose([p for _, p in mine.top_k], [t["probability"] for t in served["top_k"]], atol=1e-5)
    for name in ("least_confidence", "margin", "entropy", "fre", "knn"):
        assert served["scores"][name] is not None and mine.scores[name] is not None, name
        assert mine.scores[name] == pytest.approx(served["scores"][name], abs=1e-5), name


# -- edge-al predict ------------------------------------------------------------------------------
def _read(out: Path) -> list[dict[str, Any]]:
    if out.suffix == ".parquet":
        return pq.read_table(out).to_pylist()
    if out.suffix == ".csv":
        with open(out, newline="") as f:
            return list(csv.DictReader(f))
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_predict_writes_one_row_per_image_and_counts_bad_files(
    settings: Settings, pool: list[Path], tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pool[5].write_bytes(pool[5].read_bytes()[:150])  # corrupt
    out = tmp_path / f"out{suffix}"
    listing = tmp_path / "more.txt"
    listing.write_text(f"{pool[0]}\n")
    rc = main(["--home", str(settings.home), "--json", "predict", str(tmp_path / "pool" / "sub"), str(tmp_path / "pool" / "*.jpg"),
               str(tmp_path / "gone.jpg"), f"@{listing}", "--out", str(out), "--top-k", "2"])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert rc == 3 and doc["errors"] == 2 and doc["written"] == 39 and doc["version"] == "v0001"
    rows = _read(out)
    assert len(rows) == 41 and len({r["path"] for r in rows}) == 41, "one row per path, a path named twice once"
    bad = {r["path"]: r["error"] for r in rows if r["error"]}
    assert set(bad) == {str(pool[5]), str(tmp_path / "gone.jpg")} and "truncated" in bad[str(pool[5])]
    good = next(r for r in rows if r["path"] == str(pool[0]))
    top = json.loads(good["top_k_labels"]) if suffix == ".csv" else good["top_k_labels"]
    assert good["label"] in SIX and top[0] == good["label"] and len(top) == 2
    ref = Predictor.load(None, home=settings.home).predict(pool[0])
    assert float(good["confidence"]) == pytest.approx(ref.confidence, abs=1e-6)
    assert float(good["margin"]) == pytest.approx(ref.scores["margin"], abs=1e-6)
    # a rerun has nothing to do; a new file joins without redoing the others
    assert _cli(settings, "predict", str(tmp_path / "pool"), "--out", str(out)) == 0  # nothing new failed
    assert len(_read(out)) == 41
    write_jpegs(tmp_path / "pool" / "late", 3, seed=9)
    _cli(settings, "predict", str(tmp_path / "pool"), "--out", str(out))
    assert len(_read(out)) == 44


def test_parquet_resume_after_an_interrupt_leaves_readable_parts(settings: Settings, pool: list[Path], tmp_path: Path) -> None:
    """A run stopped part-way (Ctrl-C after three engine batches) leaves what it scored as complete
    Parquet parts; a temp file a kill left mid-write is ignored; the rerun scores only the rest
    and its merged file equals a clean run."""
    out = tmp_path / "out.parquet"

    class StopAfterThree:
        def __init__(self, **kw: Any) -> None:
            self.batches = 0

        def update(self, n: int) -> None:
            self.batches += 1
            if self.batches == 3:
                raise KeyboardInterrupt

        def close(self) -> None:
            pass

    predictor = Predictor.load(None, home=settings.home)
    with pytest.raises(KeyboardInterrupt):
        run_predict([str(tmp_path / "pool")], out, predictor=predictor, progress=StopAfterThree)
    parts = out.with_name("out.parquet.parts")
    assert not out.exists() and len(list(parts.glob("part-*.parquet"))) == 1
    assert pq.read_table(parts).num_rows == 24
    (parts / ".part-000009.parquet.x.tmp").write_bytes(b"PAR1 torn")  # what a kill mid-write leaves
    assert _cli(settings, "--json", "predict", str(tmp_path / "pool"), "--out", str(out)) == 0
    assert not parts.exists()
    resumed = pq.read_table(out).sort_by("path")
    clean = tmp_path / "clean.parquet"
    _cli(settings, "predict", str(tmp_path / "pool"), "--out", str(clean))
    expect = pq.read_table(clean).sort_by("path")
    assert resumed.num_rows == 40 and resumed.column("path").to_pylist() == expect.column("path").to_pylist()
    assert resumed.column("label").to_pylist() == expect.column("label").to_pylist()


def test_line_formats_drop_a_torn_last_line(settings: Settings, pool: list[Path], tmp_path: Path) -> None:
    for suffix in (".csv", ".jsonl"):
        out = tmp_path / f"out{suffix}"
        _cli(settings, "predict", *[str(p) for p in pool[:5]], "--out", str(out))
        text = out.read_text()
        out.write_text(text + text.splitlines()[-1][:25])  # a kill mid-line
        _cli(settings, "predict", *[str(p) for p in pool[:8]], "--out", str(out))
        rows = _read(out)
        assert [r["path"] for r in rows] == [str(p) for p in pool[:8]], suffix


def test_missing_ray_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from edge_al.errors import MissingDependency
    from edge_al.predict_ray import _ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependency, match=r"install edge-al\[ray\]"):
        _ray()


def test_output_of_another_version_or_schema_is_refused(settings: Settings, registry: Registry, pool: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    _cli(settings, "predict", str(pool[0]), "--out", str(out))
    publish_tiny(registry, SIX, seed=3, promote=False)
    with pytest.raises(Conflict, match="v0001"):
        ParquetSink(out, schema(), "v0002")
    assert _cli(settings, "predict", str(pool[1]), "--model", "v0002", "--out", str(out)) == 1
    assert _cli(settings, "predict", str(pool[1]), "--embedding", "--out", str(out)) == 1
    assert pq.read_table(out).num_rows == 1


def test_predict_ingests_nothing(tmp_path: Path, registry: Registry, pool: list[Path]) -> None:
    """A version folder outside any workspace and images: scored, and no sample is registered."""
    home = tmp_path / "empty-home"
    rc = main(["--home", str(home), "-q", "predict", str(pool[0]), "--model", str(registry.root / "v0001"),
               "--out", str(tmp_path / "o.jsonl")])  # fmt: skip
    assert rc == 0 and len(_read(tmp_path / "o.jsonl")) == 1
    store = open_store(home / "edge-al.sqlite3")
    assert store.count_samples() == 0 and not (home / "embeddings").exists() and not (home / "cache").exists()
    store.close()


def test_jpeg_size_agrees_with_pil_and_defers_to_it_on_anything_odd() -> None:
    """``images.jpeg_size`` (probe's fast path) reads what PIL reads, or says None."""
    import io as _io

    import cv2
    from PIL import Image

    from edge_al.images import jpeg_size

    rng = np.random.default_rng(0)
    for i in range(40):
        w, h = int(rng.integers(1, 400)), int(rng.integers(1, 300))
        img = rng.integers(0, 255, (h, w, 3) if i % 3 else (h, w), dtype=np.uint8)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, i % 2])
        assert ok and jpeg_size(buf.tobytes()) == Image.open(_io.BytesIO(buf.tobytes())).size == (w, h)
    b = _io.BytesIO()
    Image.new("RGB", (123, 45)).save(b, "JPEG", icc_profile=b"\0" * 3000)  # a long APP2 segment before the frame
    assert jpeg_size(b.getvalue()) == (123, 45)
    assert jpeg_size(b.getvalue()[:20]) is None and jpeg_size(b"\x89PNG\r\n") is None and jpeg_size(b"\xff\xd8\xff\xda\x00") is None
