"""Tests for edge_al.acquisition.coldstart (TypiClust): synthetic pools whose modes are known."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_al.acquisition import STRATEGIES, FileEmbeddings, Selection, select, typical_diverse
from tests.helpers import SpySource

D = 64
SIZES = (900, 100, 80, 60, 40, 20)  # one dominant mode and five rare ones


def _mixture(scale: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Imbalanced Gaussian mixture in 64-D: pool float32 ``[sum(SIZES) * scale, D]``, mode of each
    row int ``[N]``, mode centres float32 ``[6, D]``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(SIZES), D)).astype(np.float32)
    rows = [centres[m] + 0.5 * rng.standard_normal((s * scale, D)).astype(np.float32) for m, s in enumerate(SIZES)]
    modes = np.repeat(np.arange(len(SIZES)), [s * scale for s in SIZES])
    return np.concatenate(rows), modes, centres


def _near(centres: np.ndarray, modes: list[int], seed: int = 1) -> np.ndarray:
    """Fresh (not pool) embeddings, one near each listed mode: stand-ins for labeled samples."""
    rng = np.random.default_rng(seed)
    return (centres[modes] + 0.5 * rng.standard_normal((len(modes), D))).astype(np.float32)


def _coverage(modes: np.ndarray, picks: np.ndarray) -> int:
    return len(set(modes[picks].tolist()))


# --- what it picks -----------------------------------------------------------------------------


def test_twelve_picks_cover_the_modes_better_than_random() -> None:
    pool, modes, _ = _mixture()
    for seed in range(3):
        sel = typical_diverse(pool, 12, seed=seed)
        assert isinstance(sel, Selection) and sel.strategy == "typiclust" and len(sel) == 12
        assert _coverage(modes, sel.indices) >= 5, (seed, modes[sel.indices])
    random_mean = np.mean([_coverage(modes, np.random.default_rng(s).choice(modes.size, 12, replace=False)) for s in range(20)])
    assert random_mean < 4.5  # expected ~3.2: the rare modes are usually missed
    assert _coverage(modes, typical_diverse(pool, 12).indices) > random_mean + 1


def _edge_pool(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A majority class of 8 dense sub-modes (960 rows) and 4 rare classes of 3 rows each, scattered
    around it rather than clustered: the shape of magnetic_tile's defects in ImageNet features."""
    rng = np.random.default_rng(seed)
    base = 3 * rng.standard_normal(D).astype(np.float32)
    subs = base + rng.standard_normal((8, D)).astype(np.float32)
    major = [s + 0.5 * rng.standard_normal((120, D)).astype(np.float32) for s in subs]
    rare = [base + 2.5 * rng.standard_normal((3, D)).astype(np.float32) for _ in range(4)]
    return np.concatenate(major + rare), np.repeat(np.arange(5), [960, 3, 3, 3, 3])


def test_farthest_share_reaches_rare_classes_at_the_edges() -> None:
    for seed in range(3):
        pool, classes = _edge_pool(seed)
        typical = typical_diverse(pool, 10, seed=seed)
        mixed = typical_diverse(pool, 10, seed=seed, farthest_share=0.3)
        assert _coverage(classes, mixed.indices) > _coverage(classes, typical.indices), (seed, classes[mixed.indices])
        # the typical picks come first and are the plain selection of 7; the last 3 are farthest-first
        assert mixed.indices[:7].tolist() == typical_diverse(pool, 7, seed=seed).indices.tolist()
        assert np.all(mixed.components["typicality"][:7] > 0) and np.all(mixed.components["typicality"][7:] == 0)
        assert set(classes[mixed.indices[7:]].tolist()) <= {1, 2, 3, 4}
    everything_far = typical_diverse(pool, 5, farthest_share=1.0)
    assert np.all(everything_far.components["typicality"] == 0) and len(set(everything_far.indices.tolist())) == 5


def test_largest_cluster_first_and_typical_member() -> None:
    pool, modes, _ = _mixture()
    sel = typical_diverse(pool, 6)
    assert modes[sel.indices[0]] == 0  # the 900-row mode
    assert sorted(modes[sel.indices].tolist()) == list(range(6))
    assert np.all(np.diff(sel.components["cluster_size"]) <= 0)  # largest cluster first
    assert np.all(np.diff(sel.score) < 0)
    # the pick is among the most central rows of its mode, not an outlier
    unit = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    for row in sel.indices[:3]:
        members = np.flatnonzero(modes == modes[row])
        centre = unit[members].mean(axis=0)
        dist = np.linalg.norm(unit[members] - centre, axis=1)
        assert dist[members == row][0] <= np.quantile(dist, 0.25)


def test_clusters_covered_by_labeled_are_skipped() -> None:
    pool, modes, centres = _mixture()
    # one label in the dominant mode: the five picks are the five rare modes
    sel = typical_diverse(pool, 5, labeled=_near(centres, [0]))
    assert sorted(modes[sel.indices].tolist()) == [1, 2, 3, 4, 5]
    # labels in every rare mode: all picks come from the dominant one
    sel = typical_diverse(pool, 3, labeled=_near(centres, [1, 2, 3, 4, 5]))
    assert modes[sel.indices].tolist() == [0, 0, 0]


def test_picks_never_repeat_nor_hit_exclude() -> None:
    pool, modes, _ = _mixture()
    rng = np.random.default_rng(7)
    exclude = rng.random(modes.size) < 0.4
    exclude[modes == 5] = True  # a whole mode is off limits
    sel = typical_diverse(pool, 30, exclude=exclude)
    assert len(sel) == 30 and len(set(sel.indices.tolist())) == 30
    assert not exclude[sel.indices].any()
    assert _coverage(modes, sel.indices) == 5
    # n beyond the candidates returns every candidate once
    few = np.ones(modes.size, bool)
    few[[3, 950, 1100, 1199]] = False
    everything = typical_diverse(pool, 50, exclude=few)
    assert sorted(everything.indices.tolist()) == [3, 950, 1100, 1199]
    none = typical_diverse(pool, 5, exclude=np.ones(modes.size, bool))
    assert len(none) == 0 and none.indices.dtype == np.int64


def test_farthest_first_fills_up_when_clusters_run_out() -> None:
    # 10 distinct rows, 5 copies each: k-means finds 10 clusters at most
    rng = np.random.default_rng(3)
    distinct = rng.standard_normal((10, 8)).astype(np.float32)
    pool = np.repeat(distinct, 5, axis=0)
    sel = typical_diverse(pool, 20)
    assert len(set(sel.indices.tolist())) == 20
    assert sorted((sel.indices[:10] // 5).tolist()) == list(range(10))  # one pick per distinct row first
    np.testing.assert_array_equal(sel.components["typicality"][10:], 0.0)
    assert (sel.components["typicality"][:10] > 0).all()
    # too few clusters for the modes: farthest-first still reaches every mode
    mix, modes, _ = _mixture()
    capped = typical_diverse(mix, 6, max_clusters=2)
    assert _coverage(modes, capped.indices) == 6
    assert (capped.components["typicality"][2:] == 0).all()


def test_large_pool_kmeans_seeds_reach_the_rare_modes() -> None:
    """Pools over max_fit are clustered by faiss from k-means++ seeds chosen in a PCA of the fit
    sample: the rare modes (20 of 3,600 rows) still get their own clusters, and so picks."""
    pool, modes, _ = _mixture(scale=3)
    for seed in range(3):
        sel = typical_diverse(pool, 12, max_fit=1000, seed=seed)
        assert _coverage(modes, sel.indices) == 6, (seed, modes[sel.indices])


# --- contract ----------------------------------------------------------------------------------


def test_deterministic_for_a_seed() -> None:
    pool, _, centres = _mixture()
    kwargs: dict[str, Any] = {"labeled": _near(centres, [2]), "max_fit": 600}
    a = typical_diverse(pool, 10, seed=5, **kwargs)
    b = typical_diverse(pool.copy(), 10, seed=5, **kwargs)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.score, b.score)
    assert a.components.keys() == b.components.keys() == {"typicality", "cluster_size"}
    for key in a.components:
        np.testing.assert_array_equal(a.components[key], b.components[key])
        assert a.components[key].dtype == np.float32 and a.components[key].shape == (10,)


def test_file_source_larger_than_max_fit_is_read_in_chunks(tmp_path: Path) -> None:
    pool, modes, _ = _mixture(scale=3)  # 3,600 rows
    half = pool.astype(np.float16)
    path = tmp_path / "emb.f16"
    path.write_bytes(np.full((2, D), 9, np.float16).tobytes() + half.tobytes())  # 2 header rows
    source = FileEmbeddings(path, rows=half.shape[0], dim=D, row_offset=2)
    spy = SpySource(half)
    kwargs: dict[str, Any] = {"max_fit": 500, "chunk_size": 256, "seed": 1}
    from_file = typical_diverse(source, 12, **kwargs)
    from_spy = typical_diverse(spy, 12, **kwargs)
    np.testing.assert_array_equal(from_file.indices, from_spy.indices)
    np.testing.assert_array_equal(from_file.components["typicality"], from_spy.components["typicality"])
    assert spy.max_chunk == 256
    assert spy.taken <= 500 + 12 * 2000  # the fit sample, then members of the picked clusters
    assert _coverage(modes, from_file.indices) >= 5


def test_validation_messages() -> None:
    pool, _, _ = _mixture()
    with pytest.raises(ValueError) as info:
        typical_diverse(pool, 0)
    assert str(info.value) == "The 'n' parameter must be an int >= 1. Got 0 instead."
    with pytest.raises(ValueError, match=r"The 'labeled' parameter must be a float array \[M, 64\]"):
        typical_diverse(pool, 3, labeled=np.zeros((2, 32), np.float32))
    with pytest.raises(ValueError, match=r"The 'exclude' parameter must be a bool mask of shape \(1200,\)"):
        typical_diverse(pool, 3, exclude=np.zeros(10, bool))
    for name in ("max_fit", "k_neighbors", "max_clusters", "chunk_size"):
        with pytest.raises(ValueError, match=f"The '{name}' parameter must be an int >= 1. Got 0 instead."):
            typical_diverse(pool, 3, **{name: 0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="The 'iterations' parameter must be an int >= 0"):
        typical_diverse(pool, 3, iterations=-1)
    with pytest.raises(ValueError, match="The 'farthest_share' parameter must be"):
        typical_diverse(pool, 3, farthest_share=1.5)
    bad = pool.copy()
    bad[5, 0] = np.nan
    with pytest.raises(ValueError, match="The 'embeddings' parameter must be finite"):
        typical_diverse(bad, 3)


# --- as a strategy -----------------------------------------------------------------------------


def test_select_typiclust_without_probs() -> None:
    pool, modes, centres = _mixture()
    assert "typiclust" in STRATEGIES
    direct = typical_diverse(pool, 12, seed=2)
    for probs in (None, np.ones((modes.size, 1), np.float32)):
        sel = select("typiclust", 12, probs, pool, np.empty((0, D), np.float32), np.empty(0, np.int64), num_classes=1, seed=2)
        assert sel.strategy == "typiclust"
        np.testing.assert_array_equal(sel.indices, direct.indices)
    labeled = _near(centres, [0])
    sel = select("typiclust", 5, None, pool, labeled, np.zeros(1, np.int64), max_fit=800, iterations=10)
    assert sorted(modes[sel.indices].tolist()) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="The 'variance' parameter is not valid for strategy 'typiclust'"):
        select("typiclust", 5, None, pool, labeled, np.empty(0, np.int64), variance=0.9)


def test_large_pool_runs() -> None:
    rng = np.random.default_rng(0)
    n_rows, dim = 200_000, 256
    pool = rng.standard_normal((n_rows, dim), dtype=np.float32)
    pool[:, :8] += 3.0 * rng.standard_normal((8, 8), dtype=np.float32)[rng.integers(8, size=n_rows)]
    spy = SpySource(pool)
    sel = typical_diverse(spy, 20, labeled=pool[:5], chunk_size=50_000)
    assert len(set(sel.indices.tolist())) == 20
    assert 0 < spy.max_chunk <= 50_000  # blocks of at most chunk_size rows (parallel.block_rows)
