"""Nearest labeled embedding of pool rows: exact below a size threshold, inverted lists above.

k-NN novelty is the cosine distance from each pool row to its nearest labeled embedding. Exact
search costs ``N * M * D`` multiply-adds: 1.3e13 at 1,000,000 pool rows x 10,000 labeled x 1,280
dims, minutes on two cores however it is blocked. ``NearestLabeled`` searches exactly (blocked
float32 GEMM) while the labeled set is at most ``exact_max_labeled`` rows, and through inverted
lists above that (faiss's IVF idea, searched with BLAS instead of one query at a time):

- lists: a spherical k-means of the labeled rows (``faiss.Kmeans``, seeded, single-threaded, so
  one labeled set always gives the same lists) into ``nlist = max(8, M // 300)`` centroids; each
  labeled row belongs to the list of its nearest centroid;
- search: each query row is compared with the centroids (``[n, nlist]`` GEMM) and probes its
  ``nprobe = max(2, nlist // 16)`` best lists; the query rows probing one list are gathered and
  scored against all of that list's rows in one float32 GEMM. Every returned similarity is the
  exact one to the returned row; only *which* row is nearest can be wrong (the recall), when the
  true nearest row sits in a list the query did not probe.

Why not a graph (HNSW, the previous choice): a graph query evaluates ~1,000-2,000 labeled rows one
at a time from memory; a probed list is scored by GEMM at several times that rate per row, and at
1/16 of the lists probed it reads ~M/16 rows per query. Measured at 1,280 dims, 10,000 labeled:
about half the HNSW's CPU time at a higher recall (``docs/benchmarks/select.md``,
``scripts/bench_select.py``).

Rows can be appended (``add``): each joins its nearest centroid's list, no re-clustering.
``to_arrays``/``from_arrays`` turn an index into plain arrays for the workspace cache (the lists
are recomputed from the centroids on load, by the same rule).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import check_embedding_matrix, check_int
from .parallel import BLOCK_ROWS, for_each_block

__all__ = ["EXACT_MAX_LABELED", "NearestLabeled", "exact_nearest"]

EXACT_MAX_LABELED = 2048
_ROWS_PER_LIST = 300  # labeled rows per inverted list, on average
_MIN_LISTS = 8
_PROBE_FRACTION = 16  # a query probes 1/16 of the lists (at least 2)
_KMEANS_ITERATIONS = 20
_QUERY_BLOCK = BLOCK_ROWS  # pool rows per search block (bounds the gathered copies)


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
    ends in ``_``: ``labeled_`` (the rows, in insertion order) and ``centroids_`` (float32
    ``[nlist, D]`` of the inverted lists, or None for exact search).
    """

    def __init__(self, labeled: np.ndarray, centroids: np.ndarray | None = None) -> None:
        self.labeled_ = labeled
        self.centroids_ = centroids
        self.probe: int | None = None  # lists per query when set (a tuning knob; the default is the rule above)
        self._lists: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (order, bounds, rows by list)

    @property
    def approximate_(self) -> bool:
        return self.centroids_ is not None

    @property
    def dim(self) -> int:
        return int(self.labeled_.shape[1])

    @property
    def nprobe(self) -> int:
        """Lists each query probes (0 for exact search)."""
        if self.centroids_ is None:
            return 0
        nlist = self.centroids_.shape[0]
        return min(nlist, max(1, self.probe) if self.probe is not None else max(2, nlist // _PROBE_FRACTION))

    def __len__(self) -> int:
        return int(self.labeled_.shape[0])

    @classmethod
    def build(cls, labeled: np.ndarray, *, exact_max_labeled: int = EXACT_MAX_LABELED) -> NearestLabeled:
        """Index normalised float32 ``labeled`` ``[M, D]`` (M >= 1, not copied): exact when
        ``M <= exact_max_labeled``, else inverted lists (see the module docstring)."""
        exact_max_labeled = check_int("exact_max_labeled", exact_max_labeled, low=0)
        lab = np.ascontiguousarray(labeled, dtype=np.float32)
        if lab.ndim != 2 or lab.shape[0] == 0 or lab.shape[1] == 0:
            raise ValueError(f"The 'labeled' parameter must be a float array [M, D] with M >= 1. Got shape {lab.shape} instead.")
        if lab.shape[0] <= exact_max_labeled:
            return cls(lab, None)
        return cls(lab, _fit_centroids(lab))

    def add(self, rows: np.ndarray) -> None:
        """Append normalised float32 ``rows`` ``[k, D]`` (each joins its nearest list, no re-clustering)."""
        new = np.ascontiguousarray(check_embedding_matrix("rows", rows, self.dim), dtype=np.float32)
        if new.shape[0] == 0:
            return
        self.labeled_ = np.concatenate([self.labeled_, new])
        self._lists = None

    def prepare(self) -> None:
        """Compute what searches share (the inverted lists) now, before several threads search."""
        if self.centroids_ is not None:
            self._inverted_lists()

    def _inverted_lists(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labeled row of each list position int64 ``[M]``, list bounds int64 ``[nlist + 1]``,
        the rows grouped by list float32 ``[M, D]``), computed once per labeled set."""
        if self._lists is None:
            assert self.centroids_ is not None
            member = np.argmax(self.labeled_ @ self.centroids_.T, axis=1)
            order = np.argsort(member, kind="stable")
            bounds = np.searchsorted(member[order], np.arange(self.centroids_.shape[0] + 1))
            self._lists = (order, bounds, np.ascontiguousarray(self.labeled_[order]))
        return self._lists

    def search(
        self, x: np.ndarray, inv_norm: np.ndarray | None = None, *, labeled_chunk_size: int = 1024, threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest labeled row of each row of ``x`` float32 ``[n, D]``: (similarity float32 ``[n]``,
        labeled row int64 ``[n]``). Rows of ``x`` are normalised or scaled by ``inv_norm``
        float32 ``[n]`` (zero rows: similarity 0). ``x`` is not modified. Inverted-list search
        runs its ``_QUERY_BLOCK``-row blocks on ``parallel.thread_count(threads)`` threads (serially
        when called from inside a pool pass); the result does not depend on the thread count."""
        if self.centroids_ is None:
            return exact_nearest(x, self.labeled_, labeled_chunk_size=labeled_chunk_size, inv_norm=inv_norm)
        sim = np.empty(x.shape[0], dtype=np.float32)
        arg = np.empty(x.shape[0], dtype=np.int64)
        self.prepare()

        def block(s: int, e: int) -> None:
            sim[s:e], arg[s:e] = self._search_block(np.asarray(x[s:e], dtype=np.float32))

        for_each_block(block, x.shape[0], _QUERY_BLOCK, threads=threads)
        if inv_norm is not None:
            sim *= inv_norm
        return sim, arg

    def _search_block(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverted-list search of ``q`` float32 ``[n, D]`` (any positive row scale: the argmax does not
        depend on it): (similarity of the unscaled rows float32 ``[n]``, labeled row int64 ``[n]``)."""
        assert self.centroids_ is not None
        order, bounds, grouped = self._inverted_lists()
        nlist, nprobe = self.centroids_.shape[0], self.nprobe
        scores = q @ self.centroids_.T
        probe = np.argpartition(-scores, nprobe - 1, axis=1)[:, :nprobe] if nprobe < nlist else np.argsort(-scores, axis=1)
        flat = probe.reshape(-1)
        by_list = np.argsort(flat, kind="stable")
        cuts = np.searchsorted(flat[by_list], np.arange(nlist + 1))
        best = np.full(q.shape[0], -np.inf, dtype=np.float32)
        arg = np.zeros(q.shape[0], dtype=np.int64)
        for lst in range(nlist):
            lo, hi = int(bounds[lst]), int(bounds[lst + 1])
            if hi == lo or cuts[lst + 1] == cuts[lst]:
                continue
            rows = by_list[cuts[lst] : cuts[lst + 1]] // nprobe
            sims = q[rows] @ grouped[lo:hi].T
            a = sims.argmax(axis=1)
            v = sims[np.arange(rows.size), a]
            better = v > best[rows]
            best[rows[better]] = v[better]
            arg[rows[better]] = order[lo + a[better]]
        return best, arg

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for a cache file: ``labeled`` float32 ``[M, D]`` and ``centroids`` float32
        ``[nlist, D]`` (``[0, D]`` for an exact index)."""
        centroids = np.zeros((0, self.dim), np.float32) if self.centroids_ is None else self.centroids_
        return {"labeled": self.labeled_, "centroids": centroids}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> NearestLabeled:
        """The inverse of ``to_arrays``; raises ``ValueError`` when the arrays do not fit together."""
        labeled = np.ascontiguousarray(arrays["labeled"], dtype=np.float32)
        centroids = np.ascontiguousarray(arrays["centroids"], dtype=np.float32)
        if labeled.ndim != 2 or labeled.shape[0] == 0:
            raise ValueError(f"A cached index must hold a [M, D] labeled matrix with M >= 1. Got shape {labeled.shape} instead.")
        if centroids.ndim != 2 or centroids.shape[1] != labeled.shape[1]:
            raise ValueError(
                f"A cached index must hold centroids [nlist, {labeled.shape[1]}] for its labeled matrix {labeled.shape}. "
                f"Got {centroids.shape} instead."
            )
        return cls(labeled, centroids if centroids.shape[0] else None)

    def __repr__(self) -> str:
        kind = f"ivf, {self.centroids_.shape[0]} lists, probe {self.nprobe}" if self.centroids_ is not None else "exact"
        return f"NearestLabeled(rows={len(self)}, dim={self.dim}, search={kind})"


def _fit_centroids(labeled: np.ndarray) -> np.ndarray:
    """Unit centroids float32 ``[nlist, D]`` of a seeded spherical k-means of ``labeled`` ``[M, D]``."""
    faiss = _faiss()
    nlist = max(_MIN_LISTS, labeled.shape[0] // _ROWS_PER_LIST)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # the same labeled set always gives the same lists
    try:
        km = faiss.Kmeans(
            labeled.shape[1], nlist, niter=_KMEANS_ITERATIONS, seed=1234, spherical=True, min_points_per_centroid=1, verbose=False
        )
        km.train(labeled)
    finally:
        faiss.omp_set_num_threads(threads)
    centroids: np.ndarray = np.ascontiguousarray(km.centroids, dtype=np.float32)
    return centroids
