from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_al.config import Settings
from edge_al.errors import NoActiveModel
from edge_al.pool import ingest
from edge_al.registry import Registry
from edge_al.scoring import EmbeddingFile, score_pool
from edge_al.store import Store, open_store
from tests.helpers import publish_tiny, write_digit_images, write_jpegs

ROOT = Path(__file__).resolve().parents[1]


def test_score_needs_an_active_model(settings: Settings, store: Store, registry: Registry) -> None:
    with pytest.raises(NoActiveModel, match="edge-al train"):
        score_pool(settings, store, registry)


def test_score_persists_predictions_scores_and_embeddings(tmp_path: Path, settings: Settings, store: Store, registry: Registry) -> None:
    items = write_digit_images(tmp_path / "pool", 60)
    ingest(store, settings, [tmp_path / "pool"])
    for p, lab in items[:20]:
        store.add_label(lab)
        store.add_annotation(store.find_sample(str(p)).id, "correct", lab, "t")
    mv = publish_tiny(registry, sorted({lab for _, lab in items}), dim=16)
    rep = score_pool(settings, store, registry, batch=8)
    assert rep.scored == 60 and rep.failed == [] and rep.engine["batch"] == 8
    ids, probs = store.predictions(mv.version)
    assert len(ids) == 60 and probs.shape == (60, len(mv.labels))
    p = store.prediction(int(ids[0]), mv.version)
    assert p is not None and set(p.scores) >= {"entropy", "margin", "least_confidence", "fre", "knn"}
    emb = EmbeddingFile(settings.embeddings_dir / f"{mv.version}.f16", 16).read(ids)
    assert np.isfinite(emb).all() and np.abs(emb).sum() > 0
    # a second run has nothing to do
    again = score_pool(settings, store, registry)
    assert again.scored == 0 and again.already == 60


def test_unreadable_source_is_reported_not_fatal(tmp_path: Path, settings: Settings, store: Store, registry: Registry) -> None:
    paths = write_jpegs(tmp_path / "pool", 10)
    ingest(store, settings, [tmp_path / "pool"])
    paths[3].unlink()
    publish_tiny(registry, ["a", "b"])
    rep = score_pool(settings, store, registry, batch=4)
    assert rep.scored == 9 and len(rep.failed) == 1 and "cannot read" in rep.failed[0][1]


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return int(c.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_score_killed_mid_run_resumes_and_matches_a_clean_run(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    write_jpegs(pool, 2500, size=(640, 480))
    homes = [tmp_path / "killed", tmp_path / "clean"]
    for home in homes:
        s = Settings(home=home)
        st = open_store(s)
        ingest(st, s, [pool])
        publish_tiny(Registry(s.registry_dir), ["a", "b", "c"], dim=16)
        st.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "edge_al", "--home", str(homes[0]), "-q", "score", "--batch", "4"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = homes[0] / "edge-al.sqlite3"
    deadline = time.time() + 60
    while time.time() < deadline and _count(db) == 0 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _count(db)
    assert 0 < partial < 2500, f"the kill did not land mid-run ({partial} scored)"
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    subprocess.run([sys.executable, "-m", "edge_al", "--home", str(homes[1]), "-q", "score"], env=env, check=True, capture_output=True)
    stores = [open_store(h / "edge-al.sqlite3") for h in homes]
    (ids_a, probs_a), (ids_b, probs_b) = (s.predictions("v0001") for s in stores)
    assert len(ids_a) == 2500
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_allclose(probs_a, probs_b, atol=2e-2)  # bf16 on this CPU; same decode path
    emb_a = EmbeddingFile(homes[0] / "embeddings" / "v0001.f16", 16).read(ids_a)
    emb_b = EmbeddingFile(homes[1] / "embeddings" / "v0001.f16", 16).read(ids_b)
    assert np.abs(emb_a - emb_b).max() < 0.05
    for s in stores:
        s.close()


def test_stored_embeddings_are_reused_only_from_a_version_with_the_same_backbone_ir(tmp_path: Path) -> None:
    """``embedding_source``: the newest other version with the same backbone id, precision, runtime
    settings, views and input size whose embedding file exists; ``load_head`` checks the head's shape."""
    from edge_al.config import Settings
    from edge_al.registry import Registry
    from edge_al.scoring import HEAD_FILE, embedding_source, load_head

    settings = Settings(home=tmp_path / "home")
    registry = Registry(settings.registry_dir)
    base = {"labels": ["a", "b"], "embedding_dim": 4, "backbone_id": "bb1", "precision": "int8", "runtime_config": {},
            "test_time_views": [""], "image_size": 64}  # fmt: skip
    variants = [{}, {"backbone_id": "bb2"}, {"precision": "fp32"}, {"runtime_config": {"INFERENCE_PRECISION_HINT": "f32"}},
                {"test_time_views": ["", "h"]}, {"image_size": 96}, {"backbone_id": None}, {}, {}]  # fmt: skip
    published = []
    for change in variants:
        staging = registry.staging()
        (staging / "model.xml").write_text("<net/>")
        published.append(registry.publish(staging, {**base, **change}))
    settings.embeddings_dir.mkdir(parents=True, exist_ok=True)
    for mv in published[:7]:
        (settings.embeddings_dir / f"{mv.version}.f16").write_bytes(b"\0" * 16)
    target = published[-1]
    # the newest match with its embeddings on disk: version 0 (7 has none; 1-6 differ in one way each)
    assert embedding_source(settings, registry, target) == published[0]
    (settings.embeddings_dir / f"{published[7].version}.f16").write_bytes(b"\0" * 16)
    assert embedding_source(settings, registry, target) == published[7]
    assert embedding_source(settings, registry, published[6]) is None  # not a head on a workspace backbone
    # the head must fit the version's labels and embedding size
    assert load_head(target) is None
    np.savez(target.path / HEAD_FILE, weight=np.ones((2, 4), np.float32), bias=np.zeros(2, np.float32))
    w, b = load_head(target)  # type: ignore[misc]
    assert w.shape == (2, 4) and b.shape == (2,)
    good = (target.path / HEAD_FILE).read_bytes()
    np.savez(target.path / HEAD_FILE, weight=np.ones((3, 4), np.float32), bias=np.zeros(3, np.float32))
    assert load_head(target) is None
    for broken in (good[: len(good) // 2], b"", b"not a zip"):  # unreadable: the engine scores instead
        (target.path / HEAD_FILE).write_bytes(broken)
        assert load_head(target) is None
