"""The per-version predictions file that ``/v1/queue`` reads instead of every SQL row: same arrays
as the store, renewed whenever the version's predictions are written or deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_al.prediction_cache import PredictionCache
from edge_al.registry import Registry
from edge_al.scoring import prediction_cache
from edge_al.selection import select_next
from edge_al.store import Store, open_store
from tests.api_support import build_workspace

SCORES = {"least_confidence": 0.5, "margin": 0.1, "entropy": 0.7}


def _put(store: Store, version: str, ids: list[int], seed: int) -> np.ndarray:
    probs = np.random.default_rng(seed).dirichlet(np.ones(3), size=len(ids)).astype(np.float32)
    store.put_predictions(version, [(i, p, SCORES) for i, p in zip(ids, probs, strict=True)])
    return probs


@pytest.fixture
def ids(store: Store) -> list[int]:
    return [store.add_sample(f"{i:064x}", f"img/{i}.png", 8, 8)[0] for i in range(12)]


def _no_sql(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("read the predictions from the store although the file holds them")

    monkeypatch.setattr(store, "predictions", refuse)


@pytest.mark.stores
def test_same_arrays_as_the_store_then_read_from_the_file(
    store: Store, ids: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _put(store, "v0001", ids[::-1], seed=0)  # written out of order: both give ascending ids
    _put(store, "v0002", ids[:3], seed=1)  # another version's rows stay out
    cache = PredictionCache(tmp_path / "v0001.predictions.npz")
    want_ids, want_probs = store.predictions("v0001")
    got_ids, got_probs = cache.load(store, "v0001")
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_array_equal(got_probs, want_probs)
    assert got_ids.dtype == np.int64 and got_probs.dtype == np.float32
    assert cache.path.exists()
    _no_sql(store, monkeypatch)
    again_ids, again_probs = cache.load(store, "v0001")
    np.testing.assert_array_equal(again_ids, want_ids)
    np.testing.assert_array_equal(again_probs, want_probs)


@pytest.mark.stores
def test_new_or_changed_predictions_renew_it(store: Store, ids: list[int], tmp_path: Path) -> None:
    _put(store, "v0001", ids[:6], seed=0)
    cache = PredictionCache(tmp_path / "v0001.predictions.npz")
    assert len(cache.load(store, "v0001")[0]) == 6
    _put(store, "v0001", ids[6:], seed=1)  # scoring's next flush
    got_ids, got_probs = cache.load(store, "v0001")
    np.testing.assert_array_equal(got_ids, ids)
    changed = _put(store, "v0001", ids[:1], seed=2)  # the same rows, other probs (an upsert)
    got_ids, got_probs = cache.load(store, "v0001")
    np.testing.assert_array_equal(got_probs[0], changed[0])
    np.testing.assert_array_equal(got_probs, store.predictions("v0001")[1])


@pytest.mark.stores
def test_other_versions_writes_leave_it(store: Store, ids: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _put(store, "v0001", ids, seed=0)
    cache = PredictionCache(tmp_path / "v0001.predictions.npz")
    cache.load(store, "v0001")
    _put(store, "v0002", ids, seed=1)
    _no_sql(store, monkeypatch)
    assert len(cache.load(store, "v0001")[0]) == len(ids)


@pytest.mark.stores
def test_deleted_predictions_renew_it(store: Store, ids: list[int], tmp_path: Path) -> None:
    _put(store, "v0001", ids, seed=0)
    cache = PredictionCache(tmp_path / "v0001.predictions.npz")
    cache.load(store, "v0001")
    store.delete_predictions("v0001")
    got_ids, _ = cache.load(store, "v0001")
    assert len(got_ids) == 0
    _put(store, "v0001", ids[:2], seed=3)
    np.testing.assert_array_equal(cache.load(store, "v0001")[0], ids[:2])


@pytest.mark.stores
def test_a_torn_or_foreign_file_is_read_again(store: Store, ids: list[int], tmp_path: Path) -> None:
    _put(store, "v0001", ids, seed=0)
    cache = PredictionCache(tmp_path / "v0001.predictions.npz")
    cache.path.write_bytes(b"PK\x03\x04 torn")
    np.testing.assert_array_equal(cache.load(store, "v0001")[0], ids)
    np.savez(cache.path, ids=np.arange(3), probs=np.zeros((3, 3), np.float32), stamp=np.array("someone else's"))
    np.testing.assert_array_equal(cache.load(store, "v0001")[0], ids)


@pytest.mark.stores
def test_an_unwritable_place_still_answers(store: Store, ids: list[int], tmp_path: Path) -> None:
    _put(store, "v0001", ids, seed=0)
    (tmp_path / "file").write_text("")
    cache = PredictionCache(tmp_path / "file" / "v0001.predictions.npz")  # its folder is a file
    np.testing.assert_array_equal(cache.load(store, "v0001")[0], ids)


@pytest.mark.stores
def test_annotated_ids_are_the_standing_decisions(store: Store, ids: list[int]) -> None:
    store.add_label("a")
    store.add_annotation(ids[3], "correct", "a")
    store.add_annotation(ids[1], "reject", None)
    store.add_annotation(ids[5], "accept", "a")
    store.undo_annotation(ids[5])
    store.add_annotation(ids[7], "accept", "a")
    store.undo_annotation(ids[7])
    store.add_annotation(ids[7], "correct", "a")
    np.testing.assert_array_equal(store.annotated_ids(), sorted([ids[1], ids[3], ids[7]]))
    np.testing.assert_array_equal(store.annotated_ids(), sorted(store.current_annotations()))


def test_the_queue_reads_the_file_and_sees_new_predictions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """select_next (what /v1/queue runs) picks the same from the file as from the store, and a
    prediction written afterwards (a rescore of one sample) changes its pick at once."""
    settings, _ = build_workspace(tmp_path, n=40)
    store, registry = open_store(settings), Registry(settings.registry_dir)
    try:
        mv = registry.active()
        assert mv is not None
        path = prediction_cache(settings, mv).path
        path.unlink(missing_ok=True)
        first = select_next(settings, store, registry, 5, "margin")
        assert path.is_file()
        with monkeypatch.context() as m:
            _no_sql(store, m)
            assert [c.as_dict() for c in select_next(settings, store, registry, 5, "margin")] == [c.as_dict() for c in first]
        target = int(store.sample_ids()[-1])
        tie = np.full(len(mv.labels), 1.0 / len(mv.labels), np.float32)  # the smallest margin there is
        store.put_predictions(mv.version, [(target, tie, SCORES)])
        picked = select_next(settings, store, registry, 1, "margin")
        assert [c.sample_id for c in picked] == [target]
        path.unlink()  # the store's rows: the same pick
        assert [c.as_dict() for c in select_next(settings, store, registry, 1, "margin")] == [c.as_dict() for c in picked]
    finally:
        store.close()
