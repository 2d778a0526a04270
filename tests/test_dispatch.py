"""ModelHolder: the batching dispatcher, hot swap and error paths, on real tiny OpenVINO models."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from edge_al.config import Settings
from edge_al.dispatch import ModelHolder, Scored, acquisition_scores
from edge_al.engine import Engine
from edge_al.errors import InvalidInput, NoActiveModel
from edge_al.registry import Registry
from tests.helpers import publish_tiny

LABELS = ["a", "b", "c"]


def _images(n: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture
def holder(settings: Settings, registry: Registry) -> Iterator[ModelHolder]:
    publish_tiny(registry, LABELS, size=32, dim=16)
    h = ModelHolder(settings, registry, max_batch=8, max_wait_ms=20, poll_s=0.1)
    h.start()
    yield h
    h.stop()


def _hammer(holder: ModelHolder, images: list[np.ndarray], threads: int) -> list[Scored]:
    out: list[Scored | None] = [None] * len(images)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(k, len(images), threads):
                out[i] = holder.score([images[i]])[0]
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not errors, errors
    assert all(r is not None for r in out)
    return [r for r in out if r is not None]


def test_concurrent_results_equal_engine_infer(holder: ModelHolder, registry: Registry) -> None:
    images = _images(96)
    mv = registry.active()
    assert mv is not None
    probs, embs = Engine(mv.xml, batch=8).infer(np.stack(images))
    results = _hammer(holder, images, threads=8)
    for i, r in enumerate(results):
        assert r.version == mv.version
        assert r.labels == LABELS
        np.testing.assert_allclose(r.probs, probs[i], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(r.embedding, embs[i], rtol=1e-4, atol=1e-5)
    stats = holder.stats()
    assert stats["images"] == 96 and stats["errors"] == 0
    assert stats["mean_batch_size"] > 1.0, stats  # batches form under 8 concurrent threads


def test_batching_off_runs_batch_one(settings: Settings, registry: Registry) -> None:
    publish_tiny(registry, LABELS)
    with ModelHolder(settings, registry, batching=False, max_batch=8) as h:
        _hammer(h, _images(40), threads=8)
        stats = h.stats()
    assert stats["batch_sizes"] == {1: 40}
    assert stats["mean_batch_size"] == 1.0


def test_one_call_with_several_images_and_resize(holder: ModelHolder) -> None:
    images = [*_images(5, size=32), np.zeros((50, 70, 3), np.uint8)]
    results = holder.score(images)
    assert len(results) == 6
    assert all(r.probs.shape == (3,) and r.embedding.shape == (16,) for r in results)
    assert abs(float(results[0].probs.sum()) - 1.0) < 1e-3
    assert results[0].top_k(2)[0][0] == results[0].label


def test_promote_during_traffic_swaps_without_failures(holder: ModelHolder, registry: Registry) -> None:
    old = holder.version
    images = _images(16)
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def work(k: int) -> None:
        i = k
        while not stop.is_set():
            try:
                seen.append(holder.score([images[i % len(images)]])[0].version)
            except BaseException as exc:
                errors.append(exc)
            i += 1

    ts = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in ts:
        t.start()
    time.sleep(0.3)
    new = publish_tiny(registry, LABELS, size=48, dim=16, seed=1).version  # new input size too
    deadline = time.monotonic() + 15
    while holder.version != new and time.monotonic() < deadline:  # the watcher picks it up
        time.sleep(0.05)
    time.sleep(0.3)
    stop.set()
    for t in ts:
        t.join(30)
    assert not errors, errors[:3]
    assert holder.version == new
    assert set(seen) <= {old, new} and old in seen and new in seen
    after = _hammer(holder, images, threads=4)  # images at the old 32x32 size are resized
    assert {r.version for r in after} == {new}


def test_reload_compiles_off_the_dispatcher(holder: ModelHolder, registry: Registry) -> None:
    """reload() on another thread while requests flow: nothing fails, and right after it returns
    every request runs on the new version."""
    holder.poll_s = 3600  # only the explicit reload
    images = _images(8)
    errors: list[BaseException] = []
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                holder.score(images[:2])
            except BaseException as exc:
                errors.append(exc)

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    new = publish_tiny(registry, LABELS, seed=2).version
    dispatcher = holder._threads[0]
    compiled_on: list[str] = []
    import edge_al.engine as engine_mod

    real_init = engine_mod.Engine.__init__

    def spy(self: Engine, *a: object, **kw: object) -> None:
        compiled_on.append(threading.current_thread().name)
        real_init(self, *a, **kw)  # type: ignore[arg-type]

    engine_mod.Engine.__init__ = spy  # type: ignore[method-assign]
    try:
        assert holder.reload() is True
    finally:
        engine_mod.Engine.__init__ = real_init  # type: ignore[method-assign]
    assert [r.version for r in holder.score(images)] == [new] * len(images)
    stop.set()
    for t in ts:
        t.join(30)
    assert not errors, errors[:3]
    assert compiled_on and dispatcher.name not in compiled_on
    assert holder.reload() is False  # nothing changed


def test_inference_error_resolves_futures(holder: ModelHolder) -> None:
    with pytest.raises(InvalidInput, match="uint8"):
        holder.score([np.zeros((32, 32), np.float32)])

    class Broken:
        def __init__(self, real: object) -> None:
            self.real = real

        def __getattr__(self, name: str) -> object:
            return getattr(self.real, name)

        def runner(self, *a: object, **kw: object) -> object:
            r = self.real.runner(*a, **kw)  # type: ignore[attr-defined]

            def submit(images: np.ndarray, tag: object) -> None:
                raise RuntimeError("device lost")

            r.submit = submit
            return r

    cur = holder._current
    assert cur is not None
    holder._pending = type(cur)({n: Broken(e) for n, e in cur.engines.items()}, cur.version, cur.labels)
    holder._batcher.wake()  # wake the dispatcher so it swaps
    with pytest.raises(RuntimeError, match="device lost"):
        holder.score(_images(3), timeout=10)
    assert holder.stats()["errors"] >= 3


def test_no_model_and_stopped(settings: Settings, registry: Registry) -> None:
    h = ModelHolder(settings, registry, poll_s=0.1)
    h.start()
    try:
        assert not h.ready and h.version is None
        with pytest.raises(NoActiveModel):
            h.score(_images(1))
        with pytest.raises(NoActiveModel):
            _ = h.size
        publish_tiny(registry, LABELS)
        deadline = time.monotonic() + 10
        while not h.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        assert h.ready and h.score(_images(1))[0].version == "v0001"
    finally:
        h.stop()
    with pytest.raises(NoActiveModel, match="shutting down"):
        h.score(_images(1))


def test_acquisition_scores(holder: ModelHolder) -> None:
    r = holder.score(_images(1))[0]
    s = acquisition_scores(r)
    assert set(s) == {"entropy", "margin", "least_confidence", "fre", "knn"}
    assert s["fre"] is None and 0.0 <= (s["entropy"] or 0.0) <= 1.0
    assert holder.acquisition_scores(r)["fre"] is None  # no labeled reference yet


def test_parameter_validation(settings: Settings, registry: Registry) -> None:
    with pytest.raises(InvalidInput, match="max_batch"):
        ModelHolder(settings, registry, max_batch=0)
    with pytest.raises(InvalidInput, match="max_wait_ms"):
        ModelHolder(settings, registry, max_wait_ms=-1)


def test_live_novelty_from_the_labeled_reference(settings: Settings, registry: Registry, tmp_path: object) -> None:
    from pathlib import Path

    from edge_al.pool import ingest
    from edge_al.scoring import score_pool
    from edge_al.store import open_store
    from tests.helpers import write_jpegs

    store = open_store(settings)
    publish_tiny(registry, LABELS, size=32, dim=16)
    ingest(store, settings, [str(p) for p in write_jpegs(Path(str(tmp_path)) / "pool", 24, size=(48, 48))])
    score_pool(settings, store, registry)  # writes the embeddings the reference is built from
    for name in LABELS:
        store.add_label(name)
    for k, sid in enumerate(store.sample_ids().tolist()[:12]):
        store.add_annotation(int(sid), "correct", LABELS[k % 3], "ann")
    with ModelHolder(settings, registry, store=store) as h:
        ref = h.build_novelty("v0001")
        assert ref is not None and ref.labeled.shape == (12, 16)
        r = h.score(_images(1))[0]
        s = h.acquisition_scores(r)
        assert s["fre"] is not None and s["fre"] >= 0.0
        assert s["knn"] is not None and 0.0 <= s["knn"] <= 2.0
    store.close()
