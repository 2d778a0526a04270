"""Nearest labeled embedding of pool rows: exact below a size threshold, approximate (faiss) above.

k-NN novelty is the cosine distance from each pool row to its nearest labeled embedding. Exact
search costs ``N * M * D`` multiply-adds: 1.3e13 at 1,000,000 pool rows x 10,000 labeled x 1,280
dims, minutes on two cores however it is blocked. ``NearestLabeled`` searches exactly (blocked
float32 GEMM, as before) while the labeled set is at most ``exact_max_labeled`` rows, and through
a faiss HNSW graph above that:

- graph: ``IndexHNSWSQ`` over the normalised labeled rows stored as float16 (inner product),
  ``hnsw_m`` links per node, ``ef_construction`` at build, ``ef_search`` at query;
- refinement: ``IndexRefineFlat`` re-scores the graph's best ``refine`` candidates with the exact
  float32 inner product, so every returned distance is the exact distance to the returned row;
  only *which* row is nearest can be wrong (the recall), and then the distance is slightly high.

Why the threshold is on ``M`` (2,048 by default): at ``ef_search`` 32 with 32 links an HNSW query
evaluates on the order of a thousand to two thousand labeled rows one at a time, while the exact
search evaluates all ``M`` in one BLAS GEMM at several times the rate per row (measured at 1,280
dims: exact over 10,000 labeled rows took 4-5x the HNSW time, so the two meet near 2,000); below
that the graph saves nothing, and exact results keep small pools' selections unchanged. Measured
error, speed and the crossover: ``docs/benchmarks/select.md`` (``scripts/bench_select.py``).

Rows can be appended (``add``): HNSW inserts them into the graph, no rebuild. The graph is built
single-threaded so that one labeled set always gives the same graph (faiss's parallel insertion
depends on thread timing); queries run on every core. ``to_arrays``/``from_arrays`` turn an index
into plain arrays (the faiss graph serialised to bytes) for the workspace cache.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import check_embedding_matrix, check_int

__all__ = ["EXACT_MAX_LABELED", "NearestLabeled", "exact_nearest"]

EXACT_MAX_LABELED = 2048
_HNSW_M = 32
_EF_CONSTRUCTION = 80
_EF_SEARCH = 32
_REFINE = 4
_QUERY_BLOCK = 16384  # pool rows per faiss call (bounds the float32 copy faiss needs)


def exact_nearest(
    x: np.ndarray, labeled: np.ndarray, *, labeled_chunk_size: int = 1024, inv_norm: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest labeled row of each row of ``x`` float32 ``[n, D]`` by inner product.

    ``labeled`` float32 ``[M, D]`` (M >= 1) normalised; rows of ``x`` are normalised, or scaled on
    the fly by ``inv_norm`` float32 ``[n]``. Returns (similarity float32 ``[n]``, row int64 ``[n]``),
    ties to the lower labeled row. Works in ``[n, labeled_chunk_size]`` similarity blocks.
    """
    best = np.full(x.shape[0], -np.inf, dtype=np.float32)
    arg = np.zeros(x.shape[0], dtype=np.int64)
    rows = np.arange(x.shape[0])
    for s in range(0, labeled.shape[0], labeled_chunk_size):
        sims = x @ labeled[s : s + labeled_chunk_size].T
        a = sims.argmax(axis=1)
        v = sims[rows, a]
        better = v > best
        best[better] = v[better]
        arg[better] = a[better] + s
    if inv_norm is not None:
        best *= inv_norm
    return best, arg


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # a base dependency; only a broken install gets here
        raise ImportError("Approximate k-NN novelty needs faiss: install edge-al's dependencies (pip install faiss-cpu).") from exc
    return faiss


class NearestLabeled:
    """Nearest-labeled-row search over L2-normalised labeled embeddings ``labeled_`` float32 ``[M, D]``.

    Build with ``NearestLabeled.build``; ``approximate_`` says which search it uses. Learned state
    ends in ``_``: ``labeled_`` (the rows, in insertion order) and ``ann_`` (the faiss index or None).
    """

    def __init__(self, labeled: np.ndarray, ann: Any = None) -> None:
        self.labeled_ = labeled
        self.ann_ = ann

    @property
    def approximate_(self) -> bool:
        return self.ann_ is not None

    @property
    def dim(self) -> int:
        return int(self.labeled_.shape[1])

    def __len__(self) -> int:
        return int(self.labeled_.shape[0])

    @classmethod
    def build(cls, labeled: np.ndarray, *, exact_max_labeled: int = EXACT_MAX_LABELED) -> NearestLabeled:
        """Index normalised float32 ``labeled`` ``[M, D]`` (M >= 1, not copied): exact when
        ``M <= exact_max_labeled``, else an HNSW graph (see the module docstring)."""
        exact_max_labeled = check_int("exact_max_labeled", exact_max_labeled, low=0)
        lab = np.ascontiguousarray(labeled, dtype=np.float32)
        if lab.ndim != 2 or lab.shape[0] == 0 or lab.shape[1] == 0:
            raise ValueError(f"The 'labeled' parameter must be a float array [M, D] with M >= 1. Got shape {lab.shape} instead.")
        if lab.shape[0] <= exact_max_labeled:
            return cls(lab, None)
        return cls(lab, _build_hnsw(lab))

    def add(self, rows: np.ndarray) -> None:
        """Append normalised float32 ``rows`` ``[k, D]`` (inserted into the graph, no rebuild)."""
        new = np.ascontiguousarray(check_embedding_matrix("rows", rows, self.dim), dtype=np.float32)
        if new.shape[0] == 0:
            return
        self.labeled_ = np.concatenate([self.labeled_, new])
        if self.ann_ is not None:
            faiss = _faiss()
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)  # deterministic insertion
            try:
                self.ann_.add(new)
            finally:
                faiss.omp_set_num_threads(threads)

    def search(self, x: np.ndarray, inv_norm: np.ndarray | None = None, *, labeled_chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Nearest labeled row of each row of ``x`` float32 ``[n, D]``: (similarity float32 ``[n]``,
        labeled row int64 ``[n]``). Rows of ``x`` are normalised or scaled by ``inv_norm``
        float32 ``[n]`` (zero rows: similarity 0). ``x`` is not modified."""
        if self.ann_ is None:
            return exact_nearest(x, self.labeled_, labeled_chunk_size=labeled_chunk_size, inv_norm=inv_norm)
        sim = np.empty(x.shape[0], dtype=np.float32)
        arg = np.empty(x.shape[0], dtype=np.int64)
        for s in range(0, x.shape[0], _QUERY_BLOCK):
            q = np.array(x[s : s + _QUERY_BLOCK], dtype=np.float32, order="C", copy=True)
            if inv_norm is not None:
                q *= inv_norm[s : s + _QUERY_BLOCK, None]
            d, i = self.ann_.search(q, 1)
            sim[s : s + q.shape[0]] = d[:, 0]
            arg[s : s + q.shape[0]] = i[:, 0]
        return sim, arg

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for a cache file: ``labeled`` float32 ``[M, D]`` and ``ann`` uint8 (the
        serialised faiss index; empty for an exact index)."""
        ann = np.empty(0, np.uint8) if self.ann_ is None else np.asarray(_faiss().serialize_index(self.ann_), dtype=np.uint8)
        return {"labeled": self.labeled_, "ann": ann}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> NearestLabeled:
        """The inverse of ``to_arrays``; raises ``ValueError`` when the arrays do not fit together."""
        labeled = np.ascontiguousarray(arrays["labeled"], dtype=np.float32)
        raw = np.asarray(arrays["ann"], dtype=np.uint8)
        if labeled.ndim != 2 or labeled.shape[0] == 0:
            raise ValueError(f"A cached index must hold a [M, D] labeled matrix with M >= 1. Got shape {labeled.shape} instead.")
        if raw.size == 0:
            return cls(labeled, None)
        faiss = _faiss()
        ann = faiss.deserialize_index(raw)
        if int(ann.ntotal) != labeled.shape[0] or int(ann.d) != labeled.shape[1]:
            raise ValueError(
                f"A cached index must hold as many rows as its labeled matrix {labeled.shape}. Got {ann.ntotal} x {ann.d} instead."
            )
        ann.k_factor = _REFINE
        faiss.downcast_index(ann.base_index).hnsw.efSearch = _EF_SEARCH
        return cls(labeled, ann)

    def __repr__(self) -> str:
        kind = "hnsw" if self.ann_ is not None else "exact"
        return f"NearestLabeled(rows={len(self)}, dim={self.dim}, search={kind})"


def _build_hnsw(labeled: np.ndarray) -> Any:
    """``IndexRefineFlat(IndexHNSWSQ fp16)`` over ``labeled`` float32 ``[M, D]``, inner product."""
    faiss = _faiss()
    d = labeled.shape[1]
    graph = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_fp16, _HNSW_M, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = _EF_CONSTRUCTION
    graph.hnsw.efSearch = _EF_SEARCH
    index = faiss.IndexRefineFlat(graph)
    index.k_factor = _REFINE
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.train(labeled)
        index.add(labeled)
    finally:
        faiss.omp_set_num_threads(threads)
    return index
