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


@pytest.mark.parametrize(("scan_fraction", "path"), [(0.5, "knn_gather"), (0.0, "knn_scan")])
def test_new_labels_update_exactly_without_rebuild(tmp_path: Path, world: dict[str, np.ndarray], scan_fraction: float, path: str) -> None:
    """The rows the bound cannot rule out are gathered; past ``scan_fraction`` of the pool, the whole
    pool is scored in one pass instead (small blocks on 2 threads): both give the exact distances."""
    cache = NoveltyCache(tmp_path / "v1.novelty", chunk_size=700, threads=2, scan_fraction=scan_fraction)
    knn_of(cache, world, world["lab"])
    more = np.union1d(world["lab"], [5, 901, 902, 4444])
    before = Counter(build_counts)
    got, exact = knn_of(cache, world, more)
    assert built(before) == {"index_add": 1, "knn_update": 1, path: 1}
    np.testing.assert_allclose(got, exact, atol=1e-6)  # the bound skips no row whose distance drops


def test_both_update_paths_agree(tmp_path: Path, world: dict[str, np.ndarray]) -> None:
    """Gathered and scanned updates give the same distances, also on a pool the cache holds only part
    of (the scan skips source rows it has not cached yet; they are searched after)."""
    x, ids, lab = world["x"], world["ids"], world["lab"]
    pool = np.setdiff1d(np.arange(len(x)), lab)
    more = np.union1d(lab, [5, 901, 902, 4444])
    rest = np.setdiff1d(pool, more)
    got = {}
    for fraction in (1.0, 0.0):
        cache = NoveltyCache(tmp_path / f"f{fraction}.novelty", chunk_size=500, threads=2, scan_fraction=fraction)
        cache.knn(ids[pool[:3000]], ArrayEmbeddings(x[pool[:3000]]), ids[lab], x[lab])
        got[fraction] = cache.knn(ids[rest], ArrayEmbeddings(x[rest]), ids[more], x[more])
    np.testing.assert_allclose(got[0.0], got[1.0], atol=1e-6)
    np.testing.assert_allclose(got[0.0], exact_knn(x[rest], x[more]), atol=1e-6)


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
        assert built(before) == {"index_add": 1, "knn_update": 1, "knn_gather": 1}
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


class CountingEmbeddings(ArrayEmbeddings):
    """ArrayEmbeddings that counts the rows ``take`` reads."""

    rows_read = 0

    def take(self, indices: np.ndarray) -> np.ndarray:
        self.rows_read += int(np.size(indices))
        return super().take(indices)


@pytest.fixture
def big_clusters(monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """A pool of 21,000 rows (over hybrid's max_fit: it takes the cached k-means) whose clusters
    (k = M + n = 52) hold more rows than the estimate reads (the member cap lowered to 60), as at
    1M rows, with labels and uncertainties."""
    from edge_al.acquisition import coldstart

    monkeypatch.setattr(coldstart, "_MAX_MEMBERS", 60)
    rng = np.random.default_rng(21)
    x = clustered(rng, 21000, dim=24, clusters=30)
    probs = rng.dirichlet(np.ones(3), 21000).astype(np.float32)
    lab_rows = rng.choice(21000, 40, replace=False)
    return {"x": x, "probs": probs, "ids": np.arange(21000, dtype=np.int64) * 3 + 1, "lab_rows": lab_rows}


def _hybrid(w: dict[str, np.ndarray], source: ArrayEmbeddings, lab_rows: np.ndarray, **kw: object) -> object:
    from edge_al.acquisition import select

    exclude = np.zeros(len(source), dtype=bool)
    exclude[lab_rows] = True
    # the whole batch from coverage (what the memo serves), whatever the label count
    return select("hybrid", 12, w["probs"], source, w["x"][lab_rows], np.zeros(lab_rows.size, np.int64), exclude=exclude,
                  coverage_per_class=None, **kw)  # fmt: skip


def test_typicality_memo_gives_the_fresh_picks_and_is_reused_after_a_new_label(tmp_path: Path, big_clusters: dict[str, np.ndarray]) -> None:
    """The memo returns exactly what a fresh estimate computes: picks and components equal to a
    selection without it, on the first call (filling it), the next (reading no cluster again), and
    after a new label (labels play no part in typicality: the memo is reused, not rebuilt)."""
    w = big_clusters
    cache = NoveltyCache(tmp_path / "v1.novelty")
    clusters = {"clusters": lambda k: cache.clusters(w["ids"], ArrayEmbeddings(w["x"]), k, seed=0, max_fit=2000)}
    fresh = _hybrid(w, ArrayEmbeddings(w["x"]), w["lab_rows"], **clusters)
    before = Counter(build_counts)
    first = _hybrid(w, ArrayEmbeddings(w["x"]), w["lab_rows"], typicality=cache.typicality(w["ids"]), **clusters)
    assert built(before) == {"typicality": 1}
    for got in (
        first,
        _hybrid(w, source := CountingEmbeddings(w["x"]), w["lab_rows"], typicality=(memo := cache.typicality(w["ids"])), **clusters),
    ):
        np.testing.assert_array_equal(got.indices, fresh.indices)  # type: ignore[attr-defined]
        for key, value in fresh.components.items():  # type: ignore[attr-defined]
            np.testing.assert_array_equal(got.components[key], value)  # type: ignore[attr-defined]
    assert source.rows_read == 0 and memo.misses == 0 and memo.hits >= 12
    assert built(before) == {"typicality": 1}  # nothing new to save
    # one new label, in the cluster of the first pick: that cluster is covered now, the others are read from the memo
    lab_rows = np.append(w["lab_rows"], fresh.indices[0])  # type: ignore[attr-defined]
    plain = _hybrid(w, ArrayEmbeddings(w["x"]), lab_rows, **clusters)
    memo = cache.typicality(w["ids"])
    after = _hybrid(w, source := CountingEmbeddings(w["x"]), lab_rows, typicality=memo, **clusters)
    np.testing.assert_array_equal(after.indices, plain.indices)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(after.components["typicality"], plain.components["typicality"])  # type: ignore[attr-defined]
    assert memo.hits >= 11 and memo.misses <= 1 and source.rows_read <= 60


def test_typicality_memo_is_not_reused_across_versions_or_changed_clusters(tmp_path: Path, big_clusters: dict[str, np.ndarray]) -> None:
    """A memo holds for one version's embeddings and one cluster membership: another version's cache
    starts empty; a cluster whose members changed (new pool rows, other sample ids) is estimated
    again, and the picks still equal a fresh selection; a corrupt file is dropped, not trusted."""
    from edge_al.acquisition import typical_diverse

    w = big_clusters
    x, ids = w["x"], w["ids"]
    v1 = NoveltyCache(tmp_path / "v1.novelty")
    typical_diverse(
        x, 12, max_fit=2000, clusters=lambda k: v1.clusters(ids, ArrayEmbeddings(x), k, max_fit=2000), typicality=v1.typicality(ids)
    )
    # version 2: other embeddings (a new backbone), its own cache folder, nothing reused
    x2 = clustered(np.random.default_rng(22), 21000, dim=24, clusters=30)
    v2 = NoveltyCache(tmp_path / "v2.novelty")
    memo = v2.typicality(ids)
    got = typical_diverse(x2, 12, max_fit=2000, clusters=lambda k: v2.clusters(ids, ArrayEmbeddings(x2), k, max_fit=2000), typicality=memo)
    assert memo.hits == 0 and memo.misses == 12
    np.testing.assert_array_equal(
        got.indices,
        typical_diverse(x2, 12, max_fit=2000, clusters=lambda k: v2.clusters(ids, ArrayEmbeddings(x2), k, max_fit=2000)).indices,
    )
    # the pool's rows renumbered (other sample ids at the same positions): every cluster's key changes
    memo = v1.typicality(ids + 1)
    typical_diverse(x, 12, max_fit=2000, clusters=lambda k: v1.clusters(ids, ArrayEmbeddings(x), k, max_fit=2000), typicality=memo)
    assert memo.hits == 0 and memo.misses == 12
    # a new pool row joins the cluster of the first pick: only that cluster is estimated again
    first = typical_diverse(x, 12, max_fit=2000, clusters=lambda k: v1.clusters(ids, ArrayEmbeddings(x), k, max_fit=2000)).indices[0]
    x3, ids3 = np.vstack([x, x[first] * 0.999 + 0.001]), np.append(ids, 10**6)
    x3 /= np.linalg.norm(x3, axis=1, keepdims=True)
    provider = lambda k: v1.clusters(ids3, ArrayEmbeddings(x3), k, max_fit=2000)  # noqa: E731
    memo = v1.typicality(ids3)
    got = typical_diverse(x3, 12, max_fit=2000, clusters=provider, typicality=memo)
    assert memo.misses == 1 and memo.hits == 11
    np.testing.assert_array_equal(got.indices, typical_diverse(x3, 12, max_fit=2000, clusters=provider).indices)
    # a torn memo file is rebuilt, never trusted
    path = v1.directory / "typicality.npz"
    path.write_bytes(path.read_bytes()[:100])
    before = Counter(build_counts)
    memo = v1.typicality(ids)
    assert memo.entries == {} and built(before) == {"corrupt": 1}
    with pytest.raises(ValueError, match="'typicality' parameter must be a TypicalityMemo over the 21000"):
        typical_diverse(x, 3, typicality=v1.typicality(ids[:10]))
