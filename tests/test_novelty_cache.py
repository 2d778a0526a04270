"""NoveltyCache: the k-NN novelty of a version's pool is built once, updated exactly for new labels,
rebuilt when labels are removed or a file is corrupt; and the workspace reuses it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edge_al.acquisition.cache import NoveltyCache, build_counts
from edge_al.acquisition.embeddings import ArrayEmbeddings
from edge_al.acquisition.index import exact_nearest
from edge_al.registry import Registry
from edge_al.scoring import embedding_file, labeled_reference, novelty_cache, score_pool, update_novelty
from edge_al.selection import select_next
from edge_al.store import open_store
from tests.api_support import LABELS, build_workspace
from tests.helpers import publish_tiny
from tests.test_novelty_index import clustered


def exact_knn(pool: np.ndarray, labeled: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - exact_nearest(pool, labeled)[0], 0.0, 2.0)


def built(since: Counter[str]) -> dict[str, int]:
    """What was built since the snapshot ``since`` of ``build_counts``."""
    return {k: v - since.get(k, 0) for k, v in build_counts.items() if v - since.get(k, 0)}


@pytest.fixture
def world() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    x = clustered(rng, 6000, dim=48)
    ids = np.arange(6000, dtype=np.int64) * 2 + 7  # sparse sample ids, as in a workspace
    return {"x": x, "ids": ids, "lab": np.arange(0, 6000, 20)}


def knn_of(cache: NoveltyCache, world: dict[str, np.ndarray], lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cached distances, exact distances) of the rows not in ``lab``."""
    x, ids = world["x"], world["ids"]
    pool = np.setdiff1d(np.arange(len(x)), lab)
    got = cache.knn(ids[pool], ArrayEmbeddings(x[pool]), ids[lab], x[lab])
    return got, exact_knn(x[pool], x[lab])


def test_second_call_reuses_everything(tmp_path: Path, world: dict[str, np.ndarray]) -> None:
    cache = NoveltyCache(tmp_path / "v1.novelty")
    before = Counter(build_counts)
    first, exact = knn_of(cache, world, world["lab"])
    assert built(before) == {"index": 1, "projection": 1, "knn": 1}
    np.testing.assert_allclose(first, exact, atol=1e-6)
    before = Counter(build_counts)
    again, _ = knn_of(NoveltyCache(tmp_path / "v1.novelty"), world, world["lab"])
    assert built(before) == {}
    np.testing.assert_array_equal(again, first)


def test_new_labels_update_exactly_without_rebuild(tmp_path: Path, world: dict[str, np.ndarray]) -> None:
    cache = NoveltyCache(tmp_path / "v1.novelty")
    knn_of(cache, world, world["lab"])
    more = np.union1d(world["lab"], [5, 901, 902, 4444])
    before = Counter(build_counts)
    got, exact = knn_of(cache, world, more)
    assert built(before) == {"index_add": 1, "knn_update": 1}
    np.testing.assert_allclose(got, exact, atol=1e-6)  # the bound skips no row whose distance drops


def test_new_labels_on_the_approximate_index(tmp_path: Path, world: dict[str, np.ndarray]) -> None:
    """Above the threshold the cached distances are the index's; new labels lower them exactly."""
    cache = NoveltyCache(tmp_path / "v1.novelty", exact_max_labeled=100)
    x, lab = world["x"], world["lab"]
    first, _ = knn_of(cache, world, lab)
    new = np.array([11, 3001])  # not labeled yet (3000 is: a search miss on it is not the update's to fix)
    assert not np.isin(new, lab).any()
    more = np.union1d(lab, new)
    got, exact = knn_of(cache, world, more)
    pool_before = np.setdiff1d(np.arange(len(x)), lab)
    old = first[np.isin(pool_before, np.setdiff1d(pool_before, new))]
    to_new = exact_knn(x[np.setdiff1d(pool_before, new)], x[new])
    np.testing.assert_allclose(got, np.minimum(old, to_new), atol=1e-6)
    assert np.mean(np.isclose(got, exact, atol=1e-6)) >= 0.95


def test_removed_label_rebuilds(tmp_path: Path, world: dict[str, np.ndarray]) -> None:
    cache = NoveltyCache(tmp_path / "v1.novelty")
    knn_of(cache, world, world["lab"])
    fewer = world["lab"][1:]
    before = Counter(build_counts)
    got, exact = knn_of(cache, world, fewer)
    assert built(before) == {"index": 1, "knn": 1}
    np.testing.assert_allclose(got, exact, atol=1e-6)


def test_new_pool_rows_are_searched_and_kept(tmp_path: Path, world: dict[str, np.ndarray]) -> None:
    x, ids, lab = world["x"], world["ids"], world["lab"]
    pool = np.setdiff1d(np.arange(len(x)), lab)
    cache = NoveltyCache(tmp_path / "v1.novelty")
    cache.knn(ids[pool[:4000]], ArrayEmbeddings(x[pool[:4000]]), ids[lab], x[lab])
    before = Counter(build_counts)
    got = cache.knn(ids[pool], ArrayEmbeddings(x[pool]), ids[lab], x[lab])
    assert built(before) == {"knn_rows": 1}
    np.testing.assert_allclose(got, exact_knn(x[pool], x[lab]), atol=1e-6)


@pytest.mark.parametrize("name", ["knn.npz", "projection.npz", "index.npz"])
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_file_is_rebuilt_not_trusted(tmp_path: Path, world: dict[str, np.ndarray], name: str, damage: str) -> None:
    cache = NoveltyCache(tmp_path / "v1.novelty")
    knn_of(cache, world, world["lab"])
    path = tmp_path / "v1.novelty" / name
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:  # a flipped byte inside the array data: the zip still opens, the CRC-32 must catch it
        raw[-len(raw) // 3] ^= 0xFF
    path.write_bytes(bytes(raw))
    before = Counter(build_counts)
    got, exact = knn_of(cache, world, world["lab"])
    assert built(before).get("corrupt") == 1
    np.testing.assert_allclose(got, exact, atol=1e-6)
    before = Counter(build_counts)
    knn_of(cache, world, world["lab"])
    assert built(before) == {}  # rewritten whole


def test_workspace_rescore_and_select_reuse_the_cache(tmp_path: Path) -> None:
    """update_novelty (run after every scoring) and select --strategy knn share the version's
    cache: a rescore with no new label builds nothing, a new label extends it, a new version gets its own."""
    settings, _ = build_workspace(tmp_path, n=40)
    store, registry = open_store(settings), Registry(settings.registry_dir)
    try:
        mv = registry.active()
        assert mv is not None
        ids = store.sample_ids()
        for i, sid in enumerate(ids[:12].tolist()):
            store.add_annotation(sid, "correct", LABELS[i % 3], "qe")
        emb = embedding_file(settings, mv)
        before = Counter(build_counts)
        update_novelty(settings, store, mv, emb)
        assert built(before) == {"index": 1, "projection": 1, "knn": 1}
        before = Counter(build_counts)
        update_novelty(settings, store, mv, emb)  # a rescore with no new labels
        chosen = select_next(settings, store, registry, 5, "knn")
        assert built(before) == {}
        store.add_annotation(int(ids[20]), "correct", LABELS[1], "qe")
        before = Counter(build_counts)
        select_next(settings, store, registry, 5, "knn")
        assert built(before) == {"index_add": 1, "knn_update": 1}
        # the cached distances are the exact ones (a small labeled set is searched exactly)
        lab_ids, lab_emb, _ = labeled_reference(store, mv, emb)
        _, preds = store.predictions(mv.version)
        pool_ids = np.setdiff1d(store.predictions(mv.version)[0], lab_ids)
        x = emb.read(pool_ids)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        lab = lab_emb / np.linalg.norm(lab_emb, axis=1, keepdims=True)
        want = exact_knn(x, lab)
        got = novelty_cache(settings, mv).knn(pool_ids, ArrayEmbeddings(x), lab_ids, lab_emb)
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert len(chosen) == 5 and preds.shape[0] == 40
        assert (settings.embeddings_dir / f"{mv.version}.novelty" / "knn.npz").is_file()
        emb.close()
        # a new model version: new embeddings, its own cache, built once
        publish_tiny(registry, LABELS, seed=1)
        before = Counter(build_counts)
        score_pool(settings, store, registry)
        assert built(before) == {"index": 1, "projection": 1, "knn": 1}
        assert (settings.embeddings_dir / f"{registry.active().version}.novelty" / "knn.npz").is_file()
    finally:
        store.close()


def test_cached_clusters_give_the_same_selection(tmp_path: Path) -> None:
    """hybrid/typiclust on a pool larger than max_fit cluster it once per model version: the cached
    k-means gives the selection the per-call one gives, and is not refitted on the next call."""
    from edge_al.acquisition import select, typical_diverse

    rng = np.random.default_rng(9)
    x = clustered(rng, 8000, dim=24, clusters=30)
    ids = np.arange(8000, dtype=np.int64) * 3 + 1
    labeled = x[rng.choice(8000, 40, replace=False)]
    cache = NoveltyCache(tmp_path / "v1.novelty")
    source = ArrayEmbeddings(x)

    def provider(k: int) -> tuple[np.ndarray, np.ndarray]:
        return cache.clusters(ids, source, k, seed=0, max_fit=2000)

    plain = typical_diverse(x, 12, labeled=labeled, max_fit=2000)
    before = Counter(build_counts)
    cached = typical_diverse(x, 12, labeled=labeled, max_fit=2000, clusters=provider)
    assert built(before) == {"clusters": 1}
    np.testing.assert_array_equal(cached.indices, plain.indices)
    before = Counter(build_counts)
    again = typical_diverse(x, 12, labeled=labeled, max_fit=2000, clusters=provider)
    assert built(before) == {}
    np.testing.assert_array_equal(again.indices, plain.indices)
    # rows the cache has not seen are assigned to its centres, not refitted
    more_ids = np.append(ids, 10**6)
    centres, assign = cache.clusters(more_ids, ArrayEmbeddings(np.vstack([x, x[:1]])), 52, seed=0, max_fit=2000)
    assert built(before) == {"clusters_rows": 1} and assign[-1] == assign[0] and len(assign) == 8001
    # a resident pool (N <= max_fit) never asks for them: small pools are clustered as before
    probs = np.full((8000, 2), 0.5, np.float32)
    small = select("hybrid", 5, probs[:500], x[:500], labeled, np.zeros(40, np.int64), clusters=lambda k: 1 / 0)
    assert len(small) == 5 and centres.shape[1] == 24
