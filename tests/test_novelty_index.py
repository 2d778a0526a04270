"""NearestLabeled: the approximate (inverted lists) search agrees with exact search, and small labeled
sets keep the exact answer."""

from __future__ import annotations

import numpy as np
import pytest

from edge_al.acquisition import select
from edge_al.acquisition.embeddings import ArrayEmbeddings
from edge_al.acquisition.index import EXACT_MAX_LABELED, NearestLabeled, exact_nearest
from edge_al.acquisition.novelty import compute_novelty


def clustered(rng: np.random.Generator, n: int, dim: int = 96, clusters: int = 40) -> np.ndarray:
    """Unit rows around ``clusters`` random centres with a decaying within-cluster spectrum, float32 [n, dim]."""
    centres = np.random.default_rng(123).standard_normal((clusters, dim)).astype(np.float32)
    scale = (0.8 ** np.arange(dim) + 0.05).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)).astype(np.float32) * scale
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return clustered(rng, 5000), clustered(rng, 3000)


def test_approximate_search_agrees_with_exact(data: tuple[np.ndarray, np.ndarray]) -> None:
    labeled, pool = data
    index = NearestLabeled.build(labeled)
    assert len(labeled) > EXACT_MAX_LABELED and index.approximate_
    sim, row = index.search(pool)
    exact_sim, exact_row = exact_nearest(pool, labeled)
    recall = np.mean((row == exact_row) | np.isclose(sim, exact_sim, atol=1e-6))
    assert recall >= 0.95
    assert spearman(1 - sim, 1 - exact_sim) >= 0.95
    # every distance is the true distance to the row returned
    np.testing.assert_allclose(sim, np.einsum("ij,ij->i", pool, labeled[row]), atol=1e-5)
    assert np.all(sim <= exact_sim + 1e-5)


def test_small_labeled_sets_search_exactly(data: tuple[np.ndarray, np.ndarray]) -> None:
    labeled, pool = data
    index = NearestLabeled.build(labeled[:EXACT_MAX_LABELED])
    assert not index.approximate_
    sim, row = index.search(pool)
    brute = pool @ labeled[:EXACT_MAX_LABELED].T
    np.testing.assert_array_equal(row, brute.argmax(axis=1))
    np.testing.assert_allclose(sim, brute.max(axis=1), atol=1e-6)


def test_added_rows_are_found_without_rebuild(data: tuple[np.ndarray, np.ndarray]) -> None:
    labeled, pool = data
    index = NearestLabeled.build(labeled, exact_max_labeled=0)
    index.add(pool[:3])
    sim, row = index.search(pool[:3])
    np.testing.assert_array_equal(row, len(labeled) + np.arange(3))
    np.testing.assert_allclose(sim, 1.0, atol=1e-5)


def test_index_round_trips_through_arrays(data: tuple[np.ndarray, np.ndarray]) -> None:
    labeled, pool = data
    index = NearestLabeled.build(labeled, exact_max_labeled=0)
    again = NearestLabeled.from_arrays(index.to_arrays())
    assert again.approximate_
    a, b = index.search(pool[:500]), again.search(pool[:500])
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="centroids"):
        NearestLabeled.from_arrays({"labeled": labeled[:10, :5], "centroids": index.to_arrays()["centroids"]})


def test_knn_strategy_uses_the_index_above_the_threshold(data: tuple[np.ndarray, np.ndarray]) -> None:
    labeled, pool = data
    probs = np.full((len(pool), 2), 0.5, np.float32)
    labels = np.zeros(len(labeled), np.int64)
    exact = compute_novelty(probs, ArrayEmbeddings(pool), labeled, labels, fre=False, exact_max_labeled=10**6)["knn"]
    sel = select("knn", 50, probs, pool, labeled, labels)
    exact_top = set(np.argsort(-exact, kind="stable")[:50].tolist())
    assert len(exact_top & set(sel.indices.tolist())) >= 45
    forced_exact = select("knn", 50, probs, pool, labeled, labels, exact_max_labeled=10**6)
    assert set(forced_exact.indices.tolist()) == exact_top


def test_precomputed_novelty_is_used_and_checked(data: tuple[np.ndarray, np.ndarray]) -> None:
    labeled, pool = data
    probs = np.full((len(pool), 2), 0.5, np.float32)
    labels = np.zeros(len(labeled), np.int64)
    given = np.zeros(len(pool), np.float32)
    given[[7, 3, 11]] = [3.0, 2.0, 1.0]
    sel = select("knn", 3, probs, pool, labeled, labels, novelty={"knn": given})
    assert sel.indices.tolist() == [7, 3, 11]
    with pytest.raises(ValueError, match="'novelty' parameter"):
        select("knn", 3, probs, pool, labeled, labels, novelty={"knn": given[:-1]})


@pytest.mark.parametrize("labeled_rows", [0, 300, 3000])
def test_lazy_farthest_first_picks_what_the_eager_greedy_picks(labeled_rows: int) -> None:
    """Large pools fill up farthest-first lazily (a few row reads per pick instead of a pass):
    the picks equal the eager greedy's (exact labeled distances up to the index threshold; above
    it, approximate ones, so there only most picks are asked to agree)."""
    from edge_al.acquisition.coldstart import _farthest_first, _farthest_first_lazy

    rng = np.random.default_rng(5)
    x = clustered(rng, 6000, dim=32, clusters=12)
    source = ArrayEmbeddings(x)
    labeled = clustered(rng, labeled_rows, dim=32, clusters=12)
    is_candidate = np.ones(len(x), dtype=bool)
    is_candidate[::7] = False
    picks = [3, 10]
    eager = _farthest_first(source, None, labeled, picks, is_candidate, 25, 1000)
    lazy = _farthest_first_lazy(source, labeled, picks, is_candidate, 25, 1000)
    assert len(set(lazy)) == 25 and all(is_candidate[lazy]) and not set(lazy) & set(picks)
    if labeled_rows <= EXACT_MAX_LABELED:
        assert lazy == eager
    else:
        assert len(set(lazy) & set(eager)) >= 20


def test_index_is_the_same_for_the_same_labeled_set(data: tuple[np.ndarray, np.ndarray]) -> None:
    """The lists are seeded: rebuilding over the same rows gives the same centroids and answers."""
    labeled, pool = data
    a, b = NearestLabeled.build(labeled, exact_max_labeled=0), NearestLabeled.build(labeled.copy(), exact_max_labeled=0)
    assert a.centroids_ is not None and b.centroids_ is not None
    np.testing.assert_array_equal(a.centroids_, b.centroids_)
    np.testing.assert_array_equal(a.search(pool[:300])[1], b.search(pool[:300])[1])


def test_search_scales_rows_by_inv_norm(data: tuple[np.ndarray, np.ndarray]) -> None:
    """Unnormalised rows with their inverse norms give the normalised rows' answer; zero rows score 0."""
    labeled, pool = data
    index = NearestLabeled.build(labeled, exact_max_labeled=0)
    scale = np.linspace(0.5, 3.0, 400, dtype=np.float32)
    x = pool[:400] * scale[:, None]
    x[7] = 0.0
    inv = np.where(np.arange(400) == 7, 0.0, 1.0 / scale).astype(np.float32)
    sim, row = index.search(x, inv)
    ref_sim, ref_row = index.search(pool[:400])
    keep = np.arange(400) != 7
    np.testing.assert_array_equal(row[keep], ref_row[keep])
    np.testing.assert_allclose(sim[keep], ref_sim[keep], atol=1e-5)
    assert sim[7] == 0.0
