"""Cold start: the first samples to label, before any model exists (TypiClust).

Hacohen, Dekel and Weinshall, "Active learning on a budget: opposite strategies suit high and
low budgets" (ICML 2022): with a handful of labels the best picks are *typical* samples (from
dense regions) of *different* modes of the pool, not uncertain or novel ones. Only pool
embeddings from a pretrained backbone are needed.

``typical_diverse``, in bounded memory:

1. L2-normalise; fit k-means with ``K = min(M + n, max_clusters)`` clusters on a seeded subsample
   of at most ``max_fit`` pool rows: greedy k-means++ then Lloyd rounds, 3 times, keeping the
   lowest inertia. On imbalanced pools a single k-means++ run often spends two centres on the
   dominant mode and merges two rare ones (embeddings of one mode are nearly equidistant in high
   dimensions, so D^2 sampling favours the mode with the most rows); 10 candidates per centre
   and the best of 3 runs make that rare. Pools larger than ``max_fit``: the seeds are chosen the
   same way in a 64-dim PCA of the fit sample, then one faiss Lloyd run in full dimension
   (``_kmeans_faiss``; the full-dimension seeding was ~90% of a 1M-row pool's cold selection).
2. Assign every pool row (in chunks) and every labeled row to its nearest centre; a cluster
   holding a labeled row is *covered*.
3. Repeatedly take the largest uncovered cluster (ties: lower cluster index) and pick its most
   typical candidate: typicality is ``1 / mean distance to the k nearest neighbours`` among at
   most 2,000 seeded members of that cluster.
4. ``farthest_share`` of the picks (0 by default; the cold start of ``edge-al select`` uses
   ``COLD_START_FARTHEST_SHARE``) are farthest-first from the start (step 5), the rest come from
   the clusters.
5. If the clusters run out (duplicate rows, clusters whose rows are all excluded, or
   ``max_clusters``, as when the labeled rows already cover every cluster), fill up
   farthest-first: the candidate farthest from its nearest labeled or chosen row. A resident pool
   (at most ``max_fit`` rows) takes one exact pass per pick; a larger one takes one pass with a
   ``NearestLabeled`` index (approximate above its threshold) and then evaluates the greedy lazily,
   reading only the rows that reach the top (``_farthest_first_lazy``).

Memory: the fit sample (``max_fit x D`` float32), one ``chunk_size x D`` block, a few ``[N]``
arrays and ``2,000 x 2,000`` distances per cluster; never ``N x N``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import numpy as np

from ._validation import check_embedding_matrix, check_float, check_int, param_error
from .embeddings import EmbeddingSource, as_source
from .index import NearestLabeled
from .memo import TypicalityMemo
from .novelty import _top_eigh, inverse_norms, l2_normalize
from .parallel import for_each_block
from .strategies import Selection

__all__ = ["COLD_START_FARTHEST_SHARE", "fit_clusters", "typical_diverse"]

# The share of a zero-label selection taken farthest-first after the typical picks. Typical picks
# alone cover the big modes; on an imbalanced pool whose rare classes differ from the majority in a
# small patch (magnetic_tile: 5 defect classes, one free-surface class of most images) the rare
# ones sit at the edges of the embedding cloud, where only farthest-first reaches. 20 picks, frozen
# EfficientNet-Lite0 features at 320 px, classes covered, mean of 5 seeds (magnetic_tile: 5 group
# splits' pools): share 0 -> 3.96 (magnetic_tile) / 10.0 (digits), 0.2 -> 4.60 / 9.8,
# 0.3 -> 5.40 / 9.8, 0.4 -> 5.52 / 9.0, 0.5 -> 5.64 / 8.6; random 4.46 / 9.05. In the simulation
# (docs/simulation/, 0.3): magnetic_tile 6.0 vs random 4.4, digits 8.7 vs 8.7 (typical only: 9.7).
COLD_START_FARTHEST_SHARE = 0.3

_MAX_MEMBERS = 2000  # cluster rows read to estimate typicality
_N_INIT = 3  # k-means runs, the lowest inertia kept
_MIN_TRIALS = 10  # k-means++ candidates per centre, at least
_BLOCK = 2048  # rows per in-memory distance block
_SEED_COMPONENTS = 64  # PCA width the k-means++ seeds of a large pool are chosen in


def _check_args(
    rows: int, n: int, seed: int, max_fit: int, k_neighbors: int, iterations: int, max_clusters: int, chunk_size: int,
    priority: np.ndarray | None, priority_weight: float,
) -> tuple[int, int, np.ndarray | None, float]:  # fmt: skip
    """``typical_diverse``'s parameters checked; returns ``n``, ``seed``, ``priority`` (float64 [rows]) and its weight."""
    for name, value, low in (("max_fit", max_fit, 1), ("k_neighbors", k_neighbors, 1), ("iterations", iterations, 0),
                             ("max_clusters", max_clusters, 1), ("chunk_size", chunk_size, 1)):  # fmt: skip
        check_int(name, value, low=low)
    weight = check_float("priority_weight", priority_weight, low=0.0, high=1.0)
    if priority is not None:
        priority = np.asarray(priority, dtype=np.float64)
        if priority.shape != (rows,) or not np.all(np.isfinite(priority)):
            raise param_error("priority", f"a finite float array of shape ({rows},)", getattr(priority, "shape", priority))
    elif weight > 0:
        raise param_error("priority", "an array when priority_weight > 0", None)
    return check_int("n", n), check_int("seed", seed, low=0), priority, weight


def _clusters_for(
    source: EmbeddingSource,
    k: int,
    clusters: Callable[[int], tuple[np.ndarray, np.ndarray]] | None,
    max_fit: int,
    iterations: int,
    seed: int,
    chunk_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(centres [k, D], assignment int [N], the normalised fit rows or None)``: the caller's cached
    k-means for pools over ``max_fit`` rows, else one fitted here."""
    if clusters is not None and len(source) > max_fit:
        centres, assign = _check_clusters(clusters(k), k, len(source), source.dim)
        return centres, assign, None
    return fit_clusters(source, k, max_fit=max_fit, iterations=iterations, seed=seed, chunk_size=chunk_size)


def _fill_farthest(
    source: EmbeddingSource, x_fit: np.ndarray | None, lab: np.ndarray, picks: list[int], is_candidate: np.ndarray, m: int,
    chunk_size: int, labeled_distance: np.ndarray | None,
) -> list[int]:  # fmt: skip
    """``m`` more picks, farthest first from the labeled and picked rows: exact passes when the pool is
    resident (``x_fit``), else the lazy greedy that reads only the rows reaching the top."""
    if x_fit is not None:
        return _farthest_first(source, x_fit, lab, picks, is_candidate, m, chunk_size)
    return _farthest_first_lazy(source, lab, picks, is_candidate, m, chunk_size, labeled_distance)


def typical_diverse(
    embeddings: EmbeddingSource | np.ndarray,
    n: int,
    *,
    labeled: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    seed: int = 0,
    max_fit: int = 20000,
    k_neighbors: int = 20,
    iterations: int = 30,
    max_clusters: int = 500,
    chunk_size: int = 65536,
    priority: np.ndarray | None = None,
    priority_weight: float = 0.0,
    labeled_distance: np.ndarray | None = None,
    clusters: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None,
    typicality: TypicalityMemo | None = None,
    farthest_share: float = 0.0,
) -> Selection:
    """Choose ``n`` typical pool rows from different clusters, for the first labels.

    Args:
        embeddings: pool embeddings ``[N, D]``, an ``EmbeddingSource`` or float ndarray.
        n: number of picks, >= 1; more than the candidates returns every candidate.
        labeled: float ``[M, D]`` embeddings of already labeled samples (None or M = 0 allowed);
            the clusters they fall in are skipped.
        exclude: optional bool ``[N]``; True rows are never chosen (they still shape the clusters).
        seed: seeds the fit subsample, k-means++ and the per-cluster member samples.
        max_fit: pool rows k-means is fitted on (a seeded subsample when ``N`` is larger).
        k_neighbors: neighbours in the typicality estimate (fewer in small clusters).
        iterations: most Lloyd rounds (0 keeps the k-means++ centres).
        max_clusters: cap on ``K = M + n``; past it, picks beyond the uncovered clusters are
            farthest-first.
        chunk_size: most pool rows read at a time (passes read blocks of at most 16,384 rows, on a few threads).
        priority: optional float ``[N]``, higher is preferred (e.g. the model's uncertainty);
            within a cluster the pick maximises ``(1 - priority_weight) * typicality rank +
            priority_weight * priority rank`` (ranks as fractions in [0, 1] among the scored rows).
        priority_weight: float in [0, 1]; 0 is plain TypiClust.
        labeled_distance: optional float ``[N]``, each pool row's Euclidean distance to its nearest
            normalised labeled row, when the caller has it (the workspace's cached k-NN); used by
            the farthest-first fill-up of pools larger than ``max_fit`` instead of a search.
        clusters: optional ``k -> (centres float32 [k, D], assignment int64 [N])`` for pools larger
            than ``max_fit``: the caller's k-means of the pool (``NoveltyCache.clusters``, fitted
            once per model version) instead of fitting and assigning here.
        typicality: optional ``TypicalityMemo`` over these pool rows (``NoveltyCache.typicality``,
            one per model version): a cluster whose estimate it holds is not read again; the
            picks are the same as without it.
        farthest_share: float in [0, 1]: ``round(n * farthest_share)`` of the picks are
            farthest-first from the labeled rows and the typical picks (which come first), to
            reach the rare modes at the edges of the pool (``COLD_START_FARTHEST_SHARE``).

    Returns:
        A ``Selection`` in pick order, ``strategy="typiclust"``: ``score`` float32 ``(n - i) / n``
        for the i-th pick; ``components["typicality"]`` float32 ``1 / mean k-NN distance``
        (0 for farthest-first picks), ``components["cluster_size"]`` float32 pool rows in the
        pick's cluster.

    Raises:
        ValueError: a parameter out of range, or inputs of the wrong shape, dtype or values.
    """
    source = as_source(embeddings)
    n, seed, priority, priority_weight = _check_args(len(source), n, seed, max_fit, k_neighbors, iterations, max_clusters,
                                                     chunk_size, priority, priority_weight)  # fmt: skip
    lab = _check_labeled(labeled, source.dim)
    is_candidate = _check_exclude(exclude, len(source))
    if typicality is not None and typicality.ids.shape != (len(source),):
        raise param_error("typicality", f"a TypicalityMemo over the {len(source)} pool rows", typicality.ids.shape)
    n = min(n, int(is_candidate.sum()))
    if n == 0:
        return Selection(np.empty(0, np.int64), np.empty(0, np.float32), {}, "typiclust")

    share = check_float("farthest_share", farthest_share, low=0.0, high=1.0)
    n_typical = n - round(n * share)
    # 1-2. k-means on a seeded subsample, every pool row to its cluster (or the caller's, cached)
    k = min(lab.shape[0] + max(n_typical, 1), max_clusters, len(source), max_fit)
    centres, assign, x_fit = _clusters_for(source, k, clusters, max_fit, iterations, seed, chunk_size)
    covered = np.zeros(len(centres), dtype=bool)
    if lab.shape[0]:
        covered[_nearest(lab, centres)[0]] = True
    sizes = np.bincount(assign, minlength=len(centres))
    # 3. the most typical candidate of each uncovered cluster, largest first
    blend = (priority, priority_weight) if priority is not None and priority_weight > 0 else None
    picks, typ = _cluster_picks(source, assign, sizes, covered, is_candidate, n_typical, k_neighbors, seed, blend, typicality)
    if typicality is not None:
        typicality.flush()
    # 4-5. farthest-first: its share, and whatever the clusters could not give
    if len(picks) < n:
        picks += _fill_farthest(source, x_fit, lab, picks, is_candidate, n - len(picks), chunk_size, labeled_distance)
        typ += [0.0] * (n - len(typ))
    idx = np.asarray(picks, dtype=np.int64)
    return Selection(idx, ((n - np.arange(n)) / n).astype(np.float32), _components(idx, typ, sizes, assign), "typiclust")


def _components(idx: np.ndarray, typicality: list[float], sizes: np.ndarray, assign: np.ndarray) -> dict[str, np.ndarray]:
    """The picks' typicality and cluster size, float32 ``[n]`` each."""
    return {"typicality": np.asarray(typicality, dtype=np.float32), "cluster_size": sizes[assign[idx]].astype(np.float32)}


# --- inputs ------------------------------------------------------------------------------------


def _check_labeled(labeled: object, dim: int) -> np.ndarray:
    """Normalised float32 ``[M, dim]`` copy of ``labeled`` (``[0, dim]`` for None or empty)."""
    if labeled is None:
        return np.zeros((0, dim), dtype=np.float32)
    return _normalized(check_embedding_matrix("labeled", labeled, dim, " of embeddings from the pool's backbone"), "labeled")


def _check_exclude(exclude: object, rows: int) -> np.ndarray:
    """Bool ``[rows]``: True where a row may be chosen."""
    if exclude is None:
        return np.ones(rows, dtype=bool)
    ex = np.asarray(exclude)
    if ex.dtype != np.bool_ or ex.shape != (rows,):
        raise ValueError(
            f"The 'exclude' parameter must be a bool mask of shape ({rows},). Got shape {ex.shape} and dtype {ex.dtype} instead."
        )
    out: np.ndarray = ~ex
    return out


def _normalized(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` float32 ``[n, D]`` checked finite and L2-normalised in place."""
    if not np.isfinite(x).all():
        raise ValueError(f"The '{name}' parameter must be finite. Got NaN or inf values instead; check the backbone outputs.")
    return l2_normalize(x)


# --- k-means -----------------------------------------------------------------------------------


def fit_clusters(
    source: EmbeddingSource, k: int, *, max_fit: int, iterations: int, seed: int, chunk_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """k-means of the normalised pool: (centres float32 ``[<= k, D]``, assignment int64 ``[N]``,
    the normalised pool float32 ``[N, D]`` when it is resident (``N <= max_fit``), else None).
    Fitted on a seeded subsample of ``max_fit`` rows, then every row is assigned in chunks."""
    rng = np.random.default_rng(seed)
    if len(source) <= max_fit:
        x_fit = _normalized(source.take(np.arange(len(source))), "embeddings")
        return (centres := _kmeans(x_fit, min(k, len(source)), iterations, rng)), _assign_pool(source, centres, chunk_size), x_fit
    x_fit = _normalized(source.take(np.sort(rng.choice(len(source), max_fit, replace=False))), "embeddings")
    centres = _kmeans_faiss(x_fit, min(k, max_fit), iterations, rng)
    return centres, _assign_pool(source, centres, chunk_size), None


def _kmeans_faiss(x: np.ndarray, k: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """Centres float32 ``[k, D]`` of a k-means of the subsample ``x`` ``[F, D]`` of a large pool: greedy
    k-means++ seeds chosen in the ``_SEED_COMPONENTS``-dim PCA of ``x`` (where the modes are; 1/20 of the
    work at 1,280 dims), then one faiss Lloyd run in full dimension from those rows.

    The resident-pool k-means (``_kmeans``: three full-dimension k-means++ runs) spent ~90% of its
    time seeding at 500 centres (each candidate a thin ``[F, D] x [D, 10]`` product); here one run
    is enough because the seeds already spread over the modes, rare ones included.
    """
    from .index import _faiss

    faiss = _faiss()
    centred = x - x.mean(axis=0)
    _, basis = _top_eigh((centred.T @ centred).astype(np.float64), min(_SEED_COMPONENTS, x.shape[1]))
    seeds = _kmeans_pp(np.ascontiguousarray(centred @ basis.astype(np.float32)), k, rng, rows=True)
    km = faiss.Kmeans(x.shape[1], seeds.size, niter=max(iterations, 1), seed=int(rng.integers(2**31)), max_points_per_centroid=x.shape[0], min_points_per_centroid=1,
                      verbose=False)  # fmt: skip
    km.train(x, init_centroids=np.ascontiguousarray(x[seeds]))
    out: np.ndarray = np.ascontiguousarray(km.centroids, dtype=np.float32) if iterations else np.ascontiguousarray(x[seeds])
    return out


def _check_clusters(got: tuple[np.ndarray, np.ndarray], k: int, rows: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    centres, assign = np.asarray(got[0], dtype=np.float32), np.asarray(got[1], dtype=np.int64)
    if centres.ndim != 2 or not 1 <= centres.shape[0] <= k or centres.shape[1] != dim or assign.shape != (rows,):
        raise ValueError(
            f"The 'clusters' parameter must return centres [<= {k}, {dim}] and an assignment [{rows}]. "
            f"Got {centres.shape} and {assign.shape} instead."
        )
    if assign.size and (assign.min() < 0 or assign.max() >= centres.shape[0]):
        raise ValueError(f"The 'clusters' assignment must hold cluster indices in [0, {centres.shape[0]}). Got values outside instead.")
    return centres, assign


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances float32 ``[len(x), len(c)]`` between the rows of x and c."""
    d = x @ c.T
    d *= -2.0
    d += np.einsum("ij,ij->i", x, x)[:, None]
    d += np.einsum("ij,ij->i", c, c)[None, :]
    out: np.ndarray = np.maximum(d, 0.0, out=d)
    return out


def _nearest(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre of each row of ``x`` ``[n, D]``: int64 index ``[n]``, float32 squared distance ``[n]``."""
    labels = np.empty(x.shape[0], dtype=np.int64)
    dist = np.empty(x.shape[0], dtype=np.float32)
    for s in range(0, x.shape[0], _BLOCK):
        d = _sq_dist(x[s : s + _BLOCK], centres)
        best = d.argmin(axis=1)
        labels[s : s + _BLOCK] = best
        dist[s : s + _BLOCK] = d[np.arange(best.size), best]
    return labels, dist


def _kmeans(x: np.ndarray, k: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """Centres float32 ``[<= k, D]`` of the lowest-inertia of ``_N_INIT`` k-means runs on ``x`` ``[F, D]``."""
    tol = 1e-4 * float(np.var(x, axis=0).mean())  # scikit-learn's convergence tolerance
    best, best_inertia = x[:0], np.inf
    for _ in range(_N_INIT):
        centres = _lloyd(x, _kmeans_pp(x, k, rng), iterations, tol)
        inertia = float(_nearest(x, centres)[1].sum(dtype=np.float64))
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    return best


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator, *, rows: bool = False) -> np.ndarray:
    """Greedy k-means++ centres float32 ``[<= k, D]`` (Arthur and Vassilvitskii 2007; of
    ``max(10, 2 + log k)`` D^2-sampled candidates, the one that lowers the potential most); stops
    early when every row of ``x`` already coincides with a centre. ``rows``: return the chosen
    rows of ``x`` (int64) instead."""
    trials = max(_MIN_TRIALS, 2 + int(math.log(k)))
    chosen = [int(rng.integers(x.shape[0]))]
    closest = _sq_dist(x, x[chosen]).astype(np.float64)[:, 0]
    for _ in range(1, k):
        cum = np.cumsum(closest)
        if cum[-1] <= 1e-12:
            break
        cand = np.minimum(np.searchsorted(cum, rng.random(trials) * cum[-1], side="right"), x.shape[0] - 1)
        pot = np.minimum(closest[:, None], _sq_dist(x, x[cand]))  # [F, trials]
        best = int(np.argmin(pot.sum(axis=0)))
        chosen.append(int(cand[best]))
        closest = pot[:, best].astype(np.float64)
    out: np.ndarray = np.asarray(chosen, dtype=np.int64) if rows else x[chosen].copy()
    return out


def _lloyd(x: np.ndarray, centres: np.ndarray, iterations: int, tol: float) -> np.ndarray:
    """At most ``iterations`` Lloyd rounds on ``x`` ``[F, D]`` from ``centres`` ``[K, D]``, until
    the assignment is stable or the centres move less than ``tol`` (summed squared shift); an
    empty cluster moves to the row farthest from its centre."""
    k = centres.shape[0]
    labels = np.full(x.shape[0], -1, dtype=np.int64)
    for _ in range(iterations):
        new, dist = _nearest(x, centres)
        if np.array_equal(new, labels):
            break
        labels = new
        counts = np.bincount(labels, minlength=k)
        full = np.flatnonzero(counts)
        order = np.argsort(labels, kind="stable")
        starts = (np.cumsum(counts) - counts)[full]
        new_centres = centres.copy()
        new_centres[full] = np.add.reduceat(x[order], starts, axis=0) / counts[full, None].astype(np.float32)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            new_centres[empty] = x[np.argsort(-dist, kind="stable")[: empty.size]]
        shift = float(np.square(new_centres - centres).sum(dtype=np.float64))
        centres = new_centres
        if shift <= tol:
            break
    return centres


def _assign_pool(source: EmbeddingSource, centres: np.ndarray, chunk_size: int) -> np.ndarray:
    """Nearest centre int64 ``[N]`` of every pool row, in blocks of at most ``chunk_size`` rows on a
    few threads (``parallel.for_each_block``)."""
    out = np.empty(len(source), dtype=np.int64)

    def block(s: int, e: int) -> None:
        out[s:e] = _nearest(_normalized(source.chunk(s, e), "embeddings"), centres)[0]

    for_each_block(block, len(source), chunk_size)
    return out


# --- picks -------------------------------------------------------------------------------------


def _cluster_picks(
    source: EmbeddingSource,
    assign: np.ndarray,
    sizes: np.ndarray,
    covered: np.ndarray,
    is_candidate: np.ndarray,
    n: int,
    k_neighbors: int,
    seed: int,
    blend: tuple[np.ndarray, float] | None = None,
    memo: TypicalityMemo | None = None,
) -> tuple[list[int], list[float]]:
    """Up to ``n`` picks, one per uncovered cluster, largest cluster first; returns the pool rows
    and their typicality. ``memo``: per-cluster estimates kept from earlier calls."""
    members_of = np.argsort(assign, kind="stable")  # pool rows grouped by cluster, ascending within
    bounds = np.concatenate(([0], np.cumsum(sizes)))
    picks: list[int] = []
    typicality: list[float] = []
    for c in np.lexsort((np.arange(sizes.size), -sizes)).tolist():
        if len(picks) == n:
            break
        if covered[c] or sizes[c] == 0:
            continue
        members = members_of[bounds[c] : bounds[c + 1]]
        kept = None if memo is None else (memo, memo.key(members, c, seed, k_neighbors, _MAX_MEMBERS))
        row, typ = _most_typical(source, members, is_candidate, k_neighbors, np.random.default_rng((seed, c)), blend, kept)
        if row >= 0:
            picks.append(row)
            typicality.append(typ)
    return picks, typicality


def _most_typical(
    source: EmbeddingSource,
    members: np.ndarray,
    is_candidate: np.ndarray,
    k_neighbors: int,
    rng: np.random.Generator,
    blend: tuple[np.ndarray, float] | None = None,
    memo: tuple[TypicalityMemo, bytes] | None = None,
) -> tuple[int, float]:
    """The candidate among ``members`` (ascending pool rows of one cluster) with the smallest mean
    distance to its ``k`` nearest members, and its typicality; ``(-1, 0.0)`` if none is a candidate.

    Neighbours come from at most ``_MAX_MEMBERS`` seeded members; the candidates among those are
    scored, or, if none is, a seeded sample of the cluster's candidates. Ties go to the lower row.
    ``memo`` (a memo and this cluster's key): when the scored rows are the seeded members (the
    usual case), their typicality depends on nothing else and is taken from, or kept in, the memo.
    """
    cand = members[is_candidate[members]]
    if cand.size == 0:
        return -1, 0.0
    ref = members if members.size <= _MAX_MEMBERS else np.sort(rng.choice(members, _MAX_MEMBERS, replace=False))
    if ref.size == 1:  # a one-row cluster: no neighbours to be typical among
        return int(cand[0]), 0.0
    scored = ref[is_candidate[ref]]
    if scored.size == 0:
        scored = cand if cand.size <= _MAX_MEMBERS else np.sort(rng.choice(cand, _MAX_MEMBERS, replace=False))
    # Every row read is scored, excluded or not, so that a row's rank (and so the pick) does not
    # depend on which other rows happen to be excluded (the service excludes other annotators' leases).
    rows = np.union1d(ref, scored)
    memo = memo if rows.size == ref.size else None  # rows == ref: the estimate depends on the members only
    typ = None if memo is None else memo[0].get(memo[1], rows.size)
    if typ is None:
        typ = _typicality(source, rows, ref, k_neighbors)
        if memo is not None:
            memo[0].put(memo[1], typ)
    if blend is None:
        value = typ
    else:
        priority, weight = blend
        value = (1.0 - weight) * _rank_fraction(typ) + weight * _rank_fraction(priority[rows])
    candidate = is_candidate[rows]
    best = int(np.flatnonzero(candidate)[np.argmax(value[candidate])])
    return int(rows[best]), float(typ[best])


def _typicality(source: EmbeddingSource, rows: np.ndarray, ref: np.ndarray, k_neighbors: int) -> np.ndarray:
    """``1 / mean distance to the k nearest rows of ref`` float64 ``[len(rows)]`` (ascending pool rows,
    ``ref`` a subset of ``rows`` of at least 2; a row is not its own neighbour)."""
    x = _normalized(source.take(rows), "embeddings")
    dist = np.sqrt(_sq_dist(x, x[np.searchsorted(rows, ref)]))
    at = np.minimum(np.searchsorted(ref, rows), ref.size - 1)
    is_self = ref[at] == rows
    dist[np.flatnonzero(is_self), at[is_self]] = np.inf
    k = min(k_neighbors, ref.size - 1)
    mean_knn = np.partition(dist, k - 1, axis=1)[:, :k].mean(axis=1, dtype=np.float64)
    out: np.ndarray = 1.0 / np.maximum(mean_knn, 1e-6)
    return out


def _rank_fraction(x: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` as fractions in [0, 1] (ties by position; 1.0 for a single value)."""
    if x.size == 1:
        return np.ones(1)
    return np.argsort(np.argsort(x, kind="stable"), kind="stable") / (x.size - 1)


def _min_dist(source: EmbeddingSource, in_memory: np.ndarray | None, ref: np.ndarray, chunk_size: int) -> np.ndarray:
    """Distance float32 ``[N]`` from every normalised pool row to its nearest row of ``ref`` ``[R, D]``."""
    out = np.empty(len(source), dtype=np.float32)
    for s in range(0, len(source), chunk_size):
        e = min(s + chunk_size, len(source))
        x = in_memory[s:e] if in_memory is not None else _normalized(source.chunk(s, e), "embeddings")
        for b in range(0, x.shape[0], _BLOCK):
            block = np.full(min(_BLOCK, x.shape[0] - b), np.inf, dtype=np.float32)
            for r in range(0, ref.shape[0], _BLOCK):
                np.minimum(block, _sq_dist(x[b : b + _BLOCK], ref[r : r + _BLOCK]).min(axis=1), out=block)
            out[s + b : s + b + block.size] = np.sqrt(block)
    return out


def _farthest_first(
    source: EmbeddingSource,
    in_memory: np.ndarray | None,
    labeled: np.ndarray,
    picks: list[int],
    is_candidate: np.ndarray,
    count: int,
    chunk_size: int,
) -> list[int]:
    """``count`` more candidates, each the farthest from the labeled rows and every earlier pick
    (ties: lower row); ``in_memory`` is the normalised pool when it is resident, else None."""
    ref = np.concatenate([labeled, _normalized(source.take(np.asarray(picks, dtype=np.int64)), "embeddings")])
    nearest = _min_dist(source, in_memory, ref, chunk_size)
    available = is_candidate.copy()
    available[picks] = False
    out: list[int] = []
    for _ in range(count):
        row = int(np.argmax(np.where(available, nearest, -np.inf)))
        out.append(row)
        available[row] = False
        if len(out) < count:
            x_row = _normalized(source.take(np.array([row])), "embeddings")
            np.minimum(nearest, _min_dist(source, in_memory, x_row, chunk_size), out=nearest)
    return out


def _labeled_dist(source: EmbeddingSource, labeled: np.ndarray, chunk_size: int) -> np.ndarray:
    """Distance float32 ``[N]`` from every normalised pool row to its nearest normalised labeled row
    ``[M, D]`` through a ``NearestLabeled`` index (exact up to its threshold, inverted lists above); inf when M = 0."""
    out = np.full(len(source), np.inf, dtype=np.float32)
    if labeled.shape[0] == 0:
        return out
    index = NearestLabeled.build(labeled)
    index.prepare()

    def block(s: int, e: int) -> None:
        x = source.chunk(s, e)
        inv = inverse_norms(x)
        sq = (inv > 0).astype(np.float32) + 1.0 - 2.0 * index.search(x, inv)[0]
        out[s:e] = np.sqrt(np.maximum(sq, 0.0))

    for_each_block(block, len(source), chunk_size)
    return out


def _farthest_first_lazy(
    source: EmbeddingSource,
    labeled: np.ndarray,
    picks: list[int],
    is_candidate: np.ndarray,
    count: int,
    chunk_size: int,
    labeled_distance: np.ndarray | None = None,
) -> list[int]:
    """``_farthest_first`` for a pool that is not resident, without a pass over it per pick.

    One pass gives each row's distance to the nearest labeled row (``labeled_distance`` float
    ``[N]`` when the caller has it, e.g. the workspace's cached k-NN). A row's value can only drop
    as picks are added, so the greedy is evaluated lazily: the best row by its last value is
    re-scored against the picks made since (one row read); if it still beats every other row's
    last value, an upper bound of their current one, it is the greedy's pick (ties: lower row).
    """
    near = _labeled_dist(source, labeled, chunk_size) if labeled_distance is None else np.asarray(labeled_distance, np.float32)
    taken = [_normalized(source.take(np.array([p])), "embeddings") for p in picks]
    available = is_candidate.copy()
    available[picks] = False
    cand = np.flatnonzero(available)
    stream = cand[np.lexsort((cand, -near[cand]))].tolist()  # best first
    heap: list[tuple[float, int, int]] = []  # (-value, row, picks it was scored against)
    out: list[int] = []
    i = 0
    while len(out) < count and (i < len(stream) or heap):
        if heap and (i == len(stream) or heap[0][:2] < (-float(near[stream[i]]), stream[i])):
            neg, row, seen = heapq.heappop(heap)
        else:
            neg, row, seen = -float(near[stream[i]]), stream[i], 0
            i += 1
        if seen < len(taken):
            x_row = _normalized(source.take(np.array([row])), "embeddings")
            d = float(np.sqrt(_sq_dist(x_row, np.concatenate(taken[seen:])).min()))
            heapq.heappush(heap, (max(neg, -d), row, len(taken)))
            continue
        out.append(row)
        taken.append(_normalized(source.take(np.array([row])), "embeddings"))
    return out
