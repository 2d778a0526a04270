"""Tests for edge_al.acquisition: hand-built pools where the right answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_al.acquisition import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    ArrayEmbeddings,
    FileEmbeddings,
    Selection,
    fit_pca,
    half_to_float32,
    novelty_scores,
    rank_normalize,
    select,
    top_n,
    uncertainty_scores,
)
from tests.helpers import SpySource

D = 16
C = 3


def _onehot_probs(pred: np.ndarray, confidence: float = 0.9, num_classes: int = C) -> np.ndarray:
    probs = np.full((pred.size, num_classes), (1 - confidence) / (num_classes - 1), np.float32)
    probs[np.arange(pred.size), pred] = confidence
    return probs


def _cluster(rng: np.random.Generator, centre: np.ndarray, count: int, spread: float = 0.3) -> np.ndarray:
    return (centre + spread * rng.standard_normal((count, centre.size))).astype(np.float32)


@pytest.fixture
def world() -> dict[str, np.ndarray]:
    """Three well separated classes along axes 0..2, 10 labeled each, 60 pool rows near them."""
    rng = np.random.default_rng(0)
    centres = np.eye(D, dtype=np.float32)[:C] * 3.0
    labeled = np.concatenate([_cluster(rng, centres[c], 10) for c in range(C)])
    labels = np.repeat(np.arange(C), 10).astype(np.int64)
    pool = np.concatenate([_cluster(rng, centres[c], 20) for c in range(C)])
    pred = np.repeat(np.arange(C), 20)
    return {
        "centres": centres,
        "labeled": labeled,
        "labels": labels,
        "pool": pool,
        "pred": pred,
        "probs": _onehot_probs(pred),
    }


def _with_far_row(world: dict[str, np.ndarray], predicted: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Append a row pointing away from every cluster; return pool, probs, its index."""
    far = -world["centres"].sum(axis=0, keepdims=True)
    pool = np.concatenate([world["pool"], far])
    probs = np.concatenate([world["probs"], _onehot_probs(np.array([predicted]))])
    return pool, probs, pool.shape[0] - 1


# --- uncertainty -------------------------------------------------------------------------------


def test_uncertainty_scores_known_values() -> None:
    probs = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]], np.float32)
    s = uncertainty_scores(probs)
    assert set(s) == {"least_confidence", "margin", "entropy"}
    for v in s.values():
        assert v.dtype == np.float32 and v.shape == (3,)
    np.testing.assert_allclose(s["least_confidence"], [0.0, 2 / 3, 0.5], atol=1e-6)
    np.testing.assert_allclose(s["margin"], [0.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(s["entropy"], [0.0, 1.0, np.log(2) / np.log(3)], atol=1e-5)


def test_uncertainty_strategies_pick_known_rows(world: dict[str, np.ndarray]) -> None:
    probs = world["probs"].copy()
    probs[5] = [0.45, 0.45, 0.10]  # smallest margin (score 1.0), lc 0.55
    probs[17] = [0.40, 0.30, 0.30]  # least confident (0.6), margin 0.9
    probs[33] = [0.34, 0.33, 0.33]  # highest entropy, lc 0.66 -> beats both on lc too
    args = (probs, world["pool"], world["labeled"], world["labels"])
    assert select("margin", 1, *args).indices.tolist() == [5]
    assert select("entropy", 1, *args).indices.tolist() == [33]
    assert select("least-confidence", 3, *args).indices.tolist() == [33, 17, 5]
    probs[33] = probs[0]
    assert select("least-confidence", 2, *args).indices.tolist() == [17, 5]
    sel = select("margin", 2, *args)
    assert sel.indices.tolist() == [5, 17]
    np.testing.assert_allclose(sel.score, [1.0, 0.9], atol=1e-6)
    np.testing.assert_array_equal(sel.components["margin"], sel.score)


def test_ties_go_to_lower_index() -> None:
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1], np.float32)
    assert top_n(scores, np.arange(5), 3).tolist() == [1, 3, 0]
    assert top_n(scores, np.array([0, 2, 4]), 2).tolist() == [0, 2]
    np.testing.assert_allclose(rank_normalize(np.array([3.0, 1.0, 3.0, 2.0])), [5 / 6, 0, 5 / 6, 1 / 3])


# --- novelty -----------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["fre", "knn"])
def test_novelty_picks_the_far_row(world: dict[str, np.ndarray], strategy: str) -> None:
    pool, probs, far = _with_far_row(world)
    sel = select(strategy, 3, probs, pool, world["labeled"], world["labels"])
    assert sel.indices[0] == far
    assert sel.score[0] > 2 * sel.score[1]


def test_fre_is_class_aware(world: dict[str, np.ndarray]) -> None:
    """A row sitting in class 1's cluster but predicted as class 0 is novel for class 0's PCA."""
    probs = world["probs"].copy()
    probs[25] = _onehot_probs(np.array([0]))[0]  # row 25 lies in cluster 1
    sel = select("fre", 1, probs, world["pool"], world["labeled"], world["labels"])
    assert sel.indices.tolist() == [25]
    # k-NN is class-blind: row 25 is right next to class 1's labels.
    knn = select("knn", 5, probs, world["pool"], world["labeled"], world["labels"])
    assert 25 not in knn.indices.tolist()


def test_fit_pca_recovers_subspace() -> None:
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.standard_normal((D, 2)))[0].astype(np.float32)
    x = (rng.standard_normal((50, 2)) @ basis.T).astype(np.float32) + 1.0
    model = fit_pca(x, variance=0.99, max_components=8)
    assert model.n_components == 2
    inside = (rng.standard_normal((5, 2)) @ basis.T).astype(np.float32) + 1.0
    outside = inside + 2.0 * np.linalg.qr(rng.standard_normal((D, D)))[0][:, 5].astype(np.float32)
    assert model.reconstruction_error(inside).max() < 1e-4
    assert model.reconstruction_error(outside).min() > 0.1
    # Wide data (m > D) goes through the covariance path and agrees.
    wide = fit_pca(np.tile(x, (1, 1))[:, :4], variance=0.99, max_components=8)
    assert wide.components_.shape[0] == 4


def test_novelty_scores_shapes_and_knn_rule(world: dict[str, np.ndarray]) -> None:
    args = (world["probs"], world["pool"], world["labeled"], world["labels"])
    scores = novelty_scores(*args)
    assert set(scores) == {"fre", "knn"}
    for v in scores.values():
        assert v.dtype == np.float32 and v.shape == (60,)
        assert np.isfinite(v).all() and (v >= 0).all()
    assert set(novelty_scores(*args, knn_max_pairs=60 * 30 - 1)) == {"fre"}
    assert set(novelty_scores(*args, knn_max_pairs=60 * 30)) == {"fre", "knn"}
    empty = novelty_scores(world["probs"], world["pool"], np.empty((0, D), np.float32), [], knn_max_pairs=0)
    assert set(empty) == {"fre", "knn"}


# --- hybrid, stratified (coverage=False) ------------------------------------------------------------------------------------


def test_hybrid_surfaces_class_without_labels(world: dict[str, np.ndarray]) -> None:
    keep = world["labels"] != 2
    probs = world["probs"].copy()
    probs[40:, :] = _onehot_probs(np.array([0]), confidence=0.98)  # only row 40..59 -> class 0
    probs[45] = _onehot_probs(np.array([2]), confidence=0.98)  # one confident class-2 prediction
    sel = select("hybrid", 3, probs, world["pool"], world["labeled"][keep], world["labels"][keep], coverage=False)
    assert sel.strategy == "hybrid"
    assert sel.indices[0] == 45
    assert set(sel.components) == {"entropy", "margin", "fre"}


def test_hybrid_stratifies_across_predicted_classes(world: dict[str, np.ndarray]) -> None:
    probs = world["probs"].copy()
    probs[:20] = [0.5, 0.3, 0.2]  # all of class 0 is far more uncertain than the rest
    args = (probs, world["pool"], world["labeled"], world["labels"])
    sel = select("hybrid", 6, *args, similarity_threshold=1.0, coverage=False)
    assert np.bincount(world["pred"][sel.indices], minlength=C).tolist() == [2, 2, 2]
    flat = select("hybrid", 6, *args, similarity_threshold=1.0, stratify=False, coverage=False)
    assert (flat.indices < 20).all()


def test_hybrid_rare_class_first(world: dict[str, np.ndarray]) -> None:
    keep = np.concatenate([np.ones(20, bool), np.arange(10) < 3])  # class 2: 3
    sel = select("hybrid", 3, world["probs"], world["pool"], world["labeled"][keep], world["labels"][keep], coverage=False)
    assert world["pred"][sel.indices].tolist() == [2, 0, 1]


def test_hybrid_avoids_near_duplicates(world: dict[str, np.ndarray]) -> None:
    far = np.zeros((10, D), np.float32)
    far[:, 9] = 3.0  # 10 exact copies, far from everything labeled ...
    pool = np.concatenate([world["pool"], far])
    probs = np.concatenate([world["probs"], np.tile([[0.34, 0.33, 0.33]], (10, 1))]).astype(np.float32)
    dupes = set(range(60, 70))  # ... and the most uncertain: they all score highest
    args = (probs, pool, world["labeled"], world["labels"])
    sel = select("hybrid", 5, *args, coverage=False)
    assert len(dupes & set(sel.indices.tolist())) == 1
    assert len(set(sel.indices.tolist())) == 5
    no_div = select("hybrid", 5, *args, similarity_threshold=1.0, coverage=False)
    assert len(dupes & set(no_div.indices.tolist())) > 1
    # When diversity cannot fill the batch, the set-aside copies do.
    only_dupes = np.zeros(pool.shape[0], bool)
    only_dupes[:60] = True
    filled = select("hybrid", 5, *args, exclude=only_dupes, coverage=False)
    assert sorted(filled.indices.tolist()) == list(range(60, 65))


# --- contract: every strategy ------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_exclude_is_honoured(world: dict[str, np.ndarray], strategy: str) -> None:
    pool, probs, far = _with_far_row(world)
    probs[3] = [0.34, 0.33, 0.33]
    exclude = np.zeros(pool.shape[0], bool)
    exclude[[3, far]] = True
    exclude[40:50] = True
    sel = select(strategy, 20, probs, pool, world["labeled"], world["labels"], exclude=exclude)
    assert len(sel) == 20
    assert not exclude[sel.indices].any()
    all_in = select(strategy, 100, probs, pool, world["labeled"], world["labels"], exclude=exclude)
    assert sorted(all_in.indices.tolist()) == np.flatnonzero(~exclude).tolist()
    none = select(strategy, 5, probs, pool, world["labeled"], world["labels"], exclude=np.ones(61, bool))
    assert none.indices.size == 0 and none.indices.dtype == np.int64


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_contract_types_and_n_larger_than_pool(world: dict[str, np.ndarray], strategy: str) -> None:
    sel = select(strategy, 1000, world["probs"], world["pool"], world["labeled"], world["labels"])
    assert isinstance(sel, Selection) and sel.strategy == strategy
    assert sel.indices.dtype == np.int64 and sel.score.dtype == np.float32
    assert sorted(sel.indices.tolist()) == list(range(60))
    assert sel.score.shape == (60,)
    for v in sel.components.values():
        assert v.dtype == np.float32 and v.shape == (60,)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("m", [0, 1, 2])
def test_tiny_labeled_set_works(world: dict[str, np.ndarray], strategy: str, m: int) -> None:
    pool, probs, far = _with_far_row(world)
    labeled = world["labeled"][:m].reshape(m, D)
    sel = select(strategy, 4, probs, pool, labeled, world["labels"][:m])
    assert len(sel) == 4 and len(set(sel.indices.tolist())) == 4
    assert np.isfinite(sel.score).all()
    if strategy in ("fre", "knn"):
        assert sel.indices[0] == far


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_deterministic(world: dict[str, np.ndarray], strategy: str) -> None:
    args = (world["probs"], world["pool"], world["labeled"], world["labels"])
    a = select(strategy, 7, *args, seed=3)
    b = select(strategy, 7, *args, seed=3)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.score, b.score)


def test_random_depends_on_seed_only(world: dict[str, np.ndarray]) -> None:
    args = (world["probs"], world["pool"], world["labeled"], world["labels"])
    picks = {tuple(select("random", 10, *args, seed=s).indices.tolist()) for s in range(5)}
    assert len(picks) == 5
    counts = np.zeros(60)
    for s in range(300):
        counts[select("random", 10, *args, seed=s).indices] += 1
    assert counts.min() > 20 and counts.max() < 80  # expected 50 each


@pytest.mark.parametrize("strategy", ["fre", "knn", "hybrid"])
def test_file_and_array_sources_agree(world: dict[str, np.ndarray], strategy: str, tmp_path: Path) -> None:
    pool, probs, _ = _with_far_row(world)
    half = pool.astype(np.float16)
    path = tmp_path / "emb.f16"
    junk = np.full((3, D), 7, np.float16)  # a header of 3 rows to skip with row_offset
    path.write_bytes(junk.tobytes() + half.tobytes())
    source = FileEmbeddings(path, rows=pool.shape[0], dim=D, row_offset=3)
    idx = np.array([60, 2, 2, 59, 0, 1])
    np.testing.assert_array_equal(source.take(idx), half[idx].astype(np.float32))
    np.testing.assert_array_equal(source.chunk(5, 9), half[5:9].astype(np.float32))
    args = (world["labeled"], world["labels"])
    a = select(strategy, 10, probs, source, *args)
    b = select(strategy, 10, probs, ArrayEmbeddings(half), *args)
    c = select(strategy, 10, probs, half, *args)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.indices, c.indices)
    np.testing.assert_array_equal(a.score, b.score)


def test_half_conversion_is_exact_for_every_bit_pattern() -> None:
    every = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    mixed = np.concatenate([every, np.zeros(70000, np.float16), every[::-1]])  # > one block, NaN/inf inside
    for half in (every, mixed.reshape(-1, 8)):
        got = half_to_float32(half)
        assert got.dtype == np.float32 and got.shape == half.shape
        np.testing.assert_array_equal(got.view(np.uint32), half.astype(np.float32).view(np.uint32))


def test_file_embeddings_rejects_short_file(tmp_path: Path) -> None:
    path = tmp_path / "short.f16"
    path.write_bytes(np.zeros((4, D), np.float16).tobytes())
    with pytest.raises(ValueError, match="must hold at least"):
        FileEmbeddings(path, rows=5, dim=D)


@pytest.mark.parametrize("strategy", ["fre", "knn", "hybrid"])
def test_small_chunks_match_large(world: dict[str, np.ndarray], strategy: str) -> None:
    pool, probs, _ = _with_far_row(world)
    spy = SpySource(pool)
    args = (world["labeled"], world["labels"])
    small = select(strategy, 12, probs, spy, *args, chunk_size=7, labeled_chunk_size=4)
    large = select(strategy, 12, probs, pool, *args)
    assert spy.max_chunk == 7
    assert spy.taken <= 12 * 10 * C  # hybrid reads only the candidates it visits
    np.testing.assert_array_equal(small.indices, large.indices)
    np.testing.assert_allclose(small.score, large.score, rtol=1e-4, atol=1e-6)


def test_default_strategy() -> None:
    assert DEFAULT_STRATEGY == "hybrid" and DEFAULT_STRATEGY in STRATEGIES


# --- validation --------------------------------------------------------------------------------


def test_unknown_strategy_message(world: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError) as info:
        select("foo", 1, world["probs"], world["pool"], world["labeled"], world["labels"])
    assert str(info.value) == (
        "The 'strategy' parameter must be one of random, least-confidence, margin, entropy, fre, knn, hybrid, typiclust. Got 'foo' instead."
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"n": 0}, r"The 'n' parameter must be an int >= 1\. Got 0 instead\."),
        ({"n": 2.5}, r"The 'n' parameter must be an int >= 1\. Got 2\.5 instead\."),
        ({"chunk_size": 0}, r"The 'chunk_size' parameter must be an int >= 1"),
        ({"embeddings": np.zeros((59, D), np.float32)}, r"'embeddings' .* one row per row of 'probs' \(60\)"),
        ({"labeled_embeddings": np.zeros((30, D + 1))}, r"'labeled_embeddings' parameter must be a float array"),
        ({"labeled_labels": np.zeros(29, np.int64)}, r"'labeled_labels' parameter must be an int array \[M\]"),
        ({"labeled_labels": np.full(30, 3)}, r"class indices in \[0, 3\)\. Got values in \[3, 3\]"),
        ({"probs": np.zeros((60, 3), np.float32)}, r"apply a softmax"),
        ({"probs": np.ones(60, np.float32)}, r"'probs' parameter must be a 2-D float array"),
        ({"exclude": np.zeros(60, int)}, r"'exclude' parameter must be a bool mask of shape \(60,\)"),
        ({"num_classes": 4}, r"'num_classes' parameter must be an int equal to probs.shape\[1\]=3\. Got 4"),
        ({"bogus": 1}, r"The 'bogus' parameter is not valid for strategy 'hybrid'\. Valid parameters:"),
        ({"weights": {"entropy": -1}}, r"The 'weights' parameter must be a dict mapping"),
        ({"weights": {"bald": 1}}, r"The 'weights' parameter must be a dict mapping"),
        ({"similarity_threshold": 2}, r"'similarity_threshold' parameter must be a float in \[-1\.0, 1\.0\]"),
        ({"variance": 0}, r"The 'variance' parameter must be a float in \(0\.0, 1\.0\]"),
    ],
)
def test_bad_inputs_raise(world: dict[str, np.ndarray], change: dict[str, object], match: str) -> None:
    kwargs: dict[str, object] = {
        "n": 3,
        "probs": world["probs"],
        "embeddings": world["pool"],
        "labeled_embeddings": world["labeled"],
        "labeled_labels": world["labels"],
        **change,
    }
    with pytest.raises(ValueError, match=match):
        select("hybrid", **kwargs)  # type: ignore[arg-type]


def test_params_checked_even_with_no_candidates(world: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="'candidate_factor'"):
        select(
            "hybrid",
            1,
            world["probs"],
            world["pool"],
            world["labeled"],
            world["labels"],
            exclude=np.ones(60, bool),
            candidate_factor=0,
        )
    with pytest.raises(ValueError, match="not valid for strategy 'entropy'"):
        select("entropy", 1, world["probs"], world["pool"], world["labeled"], world["labels"], variance=0.9)


# --- hybrid, coverage (the default) ----------------------------------------------------------


def _three_modes(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 16, dtype=np.float32) * 5
    pool = np.concatenate([c + rng.normal(0, 0.3, (40, 16)) for c in centres]).astype(np.float32)
    return pool, np.repeat(np.arange(3), 40)


def test_hybrid_coverage_visits_the_modes_no_label_covers() -> None:
    pool, mode = _three_modes()
    labeled = pool[mode == 0][:2] + 0.01
    probs = np.full((len(pool), 2), 0.5, np.float32)
    sel = select("hybrid", 2, probs, pool, labeled, np.zeros(2, np.int64))
    assert sorted(mode[sel.indices].tolist()) == [1, 2]
    assert {"typicality", "cluster_size", "margin", "uncertainty_weight"} <= set(sel.components)
    # the coin-flip model trusts itself half: the weight is the root of its mean top-1 probability
    assert sel.components["uncertainty_weight"][0] == pytest.approx(0.5**0.5)


def test_hybrid_coverage_weighs_uncertainty_by_the_models_confidence() -> None:
    pool, mode = _three_modes()
    labeled = np.concatenate([pool[mode == 0][:2], pool[mode == 2][:2]]) + 0.01
    probs = np.tile(np.array([[0.99, 0.01]], np.float32), (len(pool), 1))
    edge = int(np.flatnonzero(mode == 1)[np.argmax(np.linalg.norm(pool[mode == 1] - pool[mode == 1].mean(0), axis=1))])
    probs[edge] = [0.5, 0.5]  # the one uncertain sample of the uncovered mode sits at its edge
    args = (pool, labeled, np.zeros(4, np.int64))
    trusting = select("hybrid", 1, probs, *args)  # a confident model: weight ~0.99, its uncertainty wins
    assert trusting.indices.tolist() == [edge]
    typical = select("hybrid", 1, probs, *args, uncertainty_weight=0.0)
    assert mode[typical.indices[0]] == 1 and typical.indices[0] != edge
    with pytest.raises(ValueError, match="uncertainty_weight"):
        select("hybrid", 1, probs, *args, uncertainty_weight=1.5)


def test_hybrid_moves_from_coverage_to_margin_as_labels_grow() -> None:
    """Budget-aware: a share max(0, 1 - M / (coverage_per_class * C)) of the batch from coverage,
    the rest the most uncertain by margin."""
    from edge_al.acquisition.strategies import Hybrid

    pool, mode = _three_modes()
    rng = np.random.default_rng(3)
    probs = rng.dirichlet([1.0, 1.0], len(pool)).astype(np.float32)
    margin_order = select("margin", 6, probs, pool, pool[:0], np.zeros(0, np.int64)).indices

    def labeled(m: int) -> tuple[np.ndarray, np.ndarray]:
        return pool[mode == 0][:m] + 0.01, np.zeros(m, np.int64)

    assert Hybrid.coverage_share(4, 2, 15) == pytest.approx(1 - 4 / 30)
    assert Hybrid.coverage_share(40, 2, 15) == 0.0 and Hybrid.coverage_share(40, 2, None) == 1.0
    # few labels (2 of 2 x 15): the whole batch from coverage, as with coverage_per_class=None
    few = select("hybrid", 6, probs, pool, *labeled(2))
    assert few.indices.tolist() == select("hybrid", 6, probs, pool, *labeled(2), coverage_per_class=None).indices.tolist()
    # 30 labels = 15 per class: margin's picks, in margin's order
    many = select("hybrid", 6, probs, pool, *labeled(30))
    assert many.indices.tolist() == margin_order.tolist()
    # 15 labels: half and half, coverage's picks first, no pick twice
    half = select("hybrid", 6, probs, pool, *labeled(15))
    cover = select("hybrid", 3, probs, pool, *labeled(15), coverage_per_class=None).indices
    assert half.indices[:3].tolist() == cover.tolist() and len(set(half.indices.tolist())) == 6
    by_margin = select("margin", 12, probs, pool, pool[:0], np.zeros(0, np.int64)).indices.tolist()
    assert half.indices[3:].tolist() == [i for i in by_margin if i not in set(cover.tolist())][:3]
    assert np.isfinite(half.components["cluster_size"][:3]).all() and np.isnan(half.components["cluster_size"][3:]).all()
    with pytest.raises(ValueError, match="coverage_per_class"):
        select("hybrid", 1, probs, pool, *labeled(2), coverage_per_class=-1)
