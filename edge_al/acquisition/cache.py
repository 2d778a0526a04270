"""The k-NN novelty of a model version's pool, kept on disk and updated as labels arrive.

One ``NoveltyCache`` per model version, in a folder beside its embeddings
(``<home>/embeddings/<version>.novelty/``), keyed by sample id:

- ``index.npz``: the ``NearestLabeled`` index over the labeled set (its sample ids, normalised
  rows, the inverted lists' centroids). Same labeled ids: loaded as it is. New labels only: the
  new rows join their nearest lists. Any label removed: rebuilt.
- ``projection.npz``: fitted once per model version (the embeddings do not change): an uncentred
  PCA basis ``P`` float32 ``[D, k]`` of the normalised pool and, per pool row, ``z = P^T x``
  float16 ``[N, k]`` and the residual norm ``r = ||x - P z||`` float32 ``[N]``.
- ``knn.npz``: per pool row, the similarity to its nearest labeled row, and the labeled ids it is
  computed against.
- ``clusters-*.npz``: the k-means of the pool (hybrid, typiclust); ``typicality.npz``: the
  per-cluster typicality estimates of ``typical_diverse`` (``memo.TypicalityMemo``, keyed by the
  cluster's member ids), valid as long as the version's embeddings, whatever the labels.

A new label ``l`` changes a pool row's k-NN distance only if ``x . l`` beats its current best.
Since ``x . l = z_x . z_l + (residuals) <= z_x . z_l + r_x r_l`` (Cauchy-Schwarz), the update
reads the full embedding of only the rows whose bound passes (``N x k`` work for the bound
instead of ``N x D`` for the pool) and scores those exactly: the update is exact, and at 1M rows
it costs a bound over the projection plus a read of the rows near the new label.

Files are written atomically (``fsutil.atomic_write``) with a CRC-32 of their arrays; a file that
does not load, fails its check or does not fit the request (another dimension, another format) is
rebuilt, never trusted. ``build_counts`` counts what was built (for tests and logs).
"""

from __future__ import annotations

import io
import json
import logging
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from edge_al.fsutil import atomic_write

from .embeddings import EmbeddingSource, half_to_float32
from .index import EXACT_MAX_LABELED, NearestLabeled
from .memo import TypicalityMemo
from .novelty import _top_eigh, inverse_norms, l2_normalize
from .parallel import for_each_block

__all__ = ["NoveltyCache", "build_counts"]

log = logging.getLogger(__name__)

FORMAT = 2  # 2: the index holds inverted-list centroids instead of a faiss HNSW graph
_COMPONENTS = 64  # projection width: the bound's z . z_l costs N x 64
_FIT_ROWS = 20000  # pool rows the projection is fitted on
_MARGIN = np.float32(2e-3)  # float16 z and float32 round-off in the bound, with room to spare
_BLOCK = 262144  # pool rows per bound block
# Rows a new label may change, as a share of the pool, above which one sequential pass over the pool
# costs less than gathering them (1M x 1,280 float16, 2 threads: a full pass ~2.1 s; gathering 30,000
# scattered rows 0.15-0.26 s, 200,000 0.43-0.58 s).
SCAN_FRACTION = 0.5

build_counts: Counter[str] = Counter()


def _crc(arrays: dict[str, np.ndarray]) -> int:
    crc = 0
    for key in sorted(arrays):
        crc = zlib.crc32(np.ascontiguousarray(arrays[key]).view(np.uint8).reshape(-1).data, crc)
    return crc


def _save(path: Path, meta: dict[str, object], arrays: dict[str, np.ndarray]) -> None:
    header = json.dumps({**meta, "format": FORMAT, "crc32": _crc(arrays)})
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(header.encode(), dtype=np.uint8), **arrays)  # type: ignore[arg-type]
    atomic_write(path, lambda f: f.write(buf.getbuffer()))


def _load(path: Path, keys: tuple[str, ...]) -> tuple[dict[str, object], dict[str, np.ndarray]] | None:
    """(meta, arrays) of a cache file, or None when it is missing, unreadable or fails its check."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            arrays = {k: z[k] for k in keys}
        if meta.get("format") != FORMAT or meta.get("crc32") != _crc(arrays):
            raise ValueError("format or checksum mismatch")
    except Exception as exc:  # a torn, truncated or foreign file: rebuild it
        log.warning("novelty cache %s is unusable (%s); rebuilding it", path.name, exc)
        build_counts["corrupt"] += 1
        return None
    return meta, arrays


class NoveltyCache:
    """k-NN novelty of one model version's pool, cached in ``directory`` (see the module docstring).

    ``exact_max_labeled`` is passed to ``NearestLabeled.build``; ``threads``: the cold passes' thread
    count (``parallel.thread_count``: the CPUs this process may run on when None); ``scan_fraction``:
    above this share of the pool, the rows a new label may change are scored in one sequential pass
    instead of gathered (``_add_labels``).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        exact_max_labeled: int = EXACT_MAX_LABELED,
        chunk_size: int = 65536,
        threads: int | None = None,
        scan_fraction: float = SCAN_FRACTION,
    ) -> None:
        self.directory = Path(directory)
        self.scan_fraction = float(scan_fraction)
        self.exact_max_labeled = int(exact_max_labeled)
        self.chunk_size = int(chunk_size)
        self.threads = threads

    # -- the labeled index -----------------------------------------------------------------------
    def index(self, labeled_ids: np.ndarray, labeled: np.ndarray) -> NearestLabeled:
        """The ``NearestLabeled`` over ``labeled`` float ``[M, D]`` (M >= 1), rows of sample ids
        ``labeled_ids`` int64 ``[M]``: loaded, extended by the new ids, or built; saved when changed."""
        return self._index(np.asarray(labeled_ids, dtype=np.int64), labeled)[0]

    def _index(self, labeled_ids: np.ndarray, labeled: np.ndarray) -> tuple[NearestLabeled, np.ndarray]:
        """(index, its row ids int64 ``[M]`` in index order)."""
        path = self.directory / "index.npz"
        got = _load(path, ("ids", "labeled", "centroids"))
        if got is not None:
            _, arr = got
            old_ids = arr["ids"]
            same_dim = arr["labeled"].ndim == 2 and arr["labeled"].shape[1] == labeled.shape[1]
            if same_dim and np.isin(old_ids, labeled_ids).all() and old_ids.size == np.unique(old_ids).size:
                try:
                    index = NearestLabeled.from_arrays({"labeled": arr["labeled"], "centroids": arr["centroids"]})
                except (ValueError, RuntimeError) as exc:
                    log.warning("novelty index of %s does not load (%s); rebuilding it", self.directory.name, exc)
                else:
                    new = ~np.isin(labeled_ids, old_ids)
                    if not new.any():
                        return index, old_ids
                    index.add(l2_normalize(np.array(labeled[new], dtype=np.float32)))
                    build_counts["index_add"] += 1
                    ids = np.concatenate([old_ids, labeled_ids[new]])
                    self._save_index(index, ids)
                    return index, ids
        index = NearestLabeled.build(l2_normalize(np.array(labeled, dtype=np.float32)), exact_max_labeled=self.exact_max_labeled)
        build_counts["index"] += 1
        self._save_index(index, labeled_ids)
        return index, labeled_ids

    def _save_index(self, index: NearestLabeled, ids: np.ndarray) -> None:
        _save(self.directory / "index.npz", {"rows": len(index)}, {"ids": ids, **index.to_arrays()})

    # -- pool k-NN distances ---------------------------------------------------------------------
    def knn(self, ids: np.ndarray, source: EmbeddingSource, labeled_ids: np.ndarray, labeled: np.ndarray) -> np.ndarray:
        """Cosine distance float32 ``[N]`` from each pool row (``source`` row i is sample
        ``ids[i]``, ids unique) to its nearest labeled row (``labeled`` float ``[M, D]``, M >= 1,
        sample ids ``labeled_ids`` int64 ``[M]``), from the cache where it is valid."""
        ids = np.asarray(ids, dtype=np.int64)
        index, index_ids = self._index(np.asarray(labeled_ids, dtype=np.int64), labeled)
        proj = self._load_projection(source.dim)
        state = self._load_knn(index_ids, proj)
        if proj is None or state is None:
            basis = proj[0] if proj is not None else self._fit_basis(source)
            z, r, sim = self._pass(source, None, basis, index)
            order = np.argsort(ids)
            proj = (basis, ids[order], z[order], r[order])
            state = (sim[order], np.sort(index_ids))
            self._save_projection(proj)
            self._save_knn(ids[order], *state)
            build_counts["knn"] += 1
        else:
            state, proj = self._bring_up_to_date(ids, source, index, index_ids, proj, state)
        pos = np.searchsorted(proj[1], ids)
        out: np.ndarray = np.clip(1.0 - state[0][pos], 0.0, 2.0).astype(np.float32)
        return out

    def _bring_up_to_date(
        self,
        ids: np.ndarray,
        source: EmbeddingSource,
        index: NearestLabeled,
        index_ids: np.ndarray,
        proj: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        state: tuple[np.ndarray, np.ndarray],
    ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """1. new labels: exact update of the cached rows through the projection bound;
        2. pool rows the cache has not seen: searched and appended. Saves what changed."""
        basis, pool_ids, z, r = proj
        sim, done_labeled = state
        new_lab = ~np.isin(index_ids, done_labeled)
        if new_lab.any():
            sim = self._add_labels(ids, source, basis, pool_ids, z, r, sim, index.labeled_[new_lab])
            done_labeled = np.sort(index_ids)
            build_counts["knn_update"] += 1
        unseen = ~np.isin(ids, pool_ids)
        if unseen.any():
            rows = np.flatnonzero(unseen)
            z_new, r_new, sim_new = self._pass(source, rows, basis, index)
            all_ids = np.concatenate([pool_ids, ids[rows]])
            order = np.argsort(all_ids)
            proj = (basis, all_ids[order], np.concatenate([z, z_new])[order], np.concatenate([r, r_new])[order])
            sim = np.concatenate([sim, sim_new])[order]
            self._save_projection(proj)
            build_counts["knn_rows"] += 1
        if new_lab.any() or unseen.any():
            self._save_knn(proj[1], sim, done_labeled)
        return (sim, done_labeled), proj

    def _add_labels(
        self,
        ids: np.ndarray,
        source: EmbeddingSource,
        basis: np.ndarray,
        pool_ids: np.ndarray,
        z: np.ndarray,
        r: np.ndarray,
        sim: np.ndarray,
        new: np.ndarray,
    ) -> np.ndarray:
        """``sim`` float32 ``[P]`` (cached pool rows ``pool_ids``) raised to the similarity to the
        normalised new labeled rows ``new`` ``[a, D]`` where that is higher. Only rows present in
        ``source`` whose bound ``z . z_l + r r_l`` can beat their current best can change: they are
        gathered and scored on ``threads`` threads, or, when they are more than ``scan_fraction``
        of the pool, every present row is scored in one sequential pass (same result: a row the
        bound rules out keeps its similarity)."""
        order = np.argsort(ids)
        at = np.minimum(np.searchsorted(ids[order], pool_ids), ids.size - 1)
        present = ids[order][at] == pool_ids
        cand = self._candidates(basis, z, r, sim, new, present)
        out = sim.copy()
        scan = cand.size > self.scan_fraction * pool_ids.size
        if scan:
            pool_pos = np.full(ids.size, -1, dtype=np.int64)  # source row -> cached row, -1: not cached
            pool_pos[order[at[present]]] = np.flatnonzero(present)

        def block(s: int, e: int) -> None:
            if scan:
                part = pool_pos[s:e]
                keep = part >= 0
                x, part = source.chunk(s, e)[keep], part[keep]
            else:
                part = cand[s:e]
                x = source.take(order[at[part]])
            out[part] = np.maximum(out[part], (l2_normalize(x) @ new.T).max(axis=1))

        for_each_block(block, ids.size if scan else cand.size, self.chunk_size, threads=self.threads)
        build_counts["knn_scan" if scan else "knn_gather"] += 1
        log.debug("novelty cache: %d new labels, %d of %d pool rows can change (%s)", new.shape[0], cand.size, pool_ids.size,
                  "one sequential pass" if scan else "gathered")  # fmt: skip
        return out

    @staticmethod
    def _candidates(basis: np.ndarray, z: np.ndarray, r: np.ndarray, sim: np.ndarray, new: np.ndarray, present: np.ndarray) -> np.ndarray:
        """Cached rows int64 ``[c]`` (ascending) that are ``present`` and whose projection bound to one
        of the normalised rows ``new`` ``[a, D]`` beats their similarity ``sim`` less ``_MARGIN``."""
        zl = new @ basis
        rl = np.sqrt(np.clip(1.0 - np.einsum("ij,ij->i", zl, zl), 0.0, None))
        hits = []
        for s in range(0, sim.size, _BLOCK):
            bound = half_to_float32(z[s : s + _BLOCK]) @ zl.T
            bound += r[s : s + _BLOCK, None] * rl[None, :]
            ok = (bound > sim[s : s + _BLOCK, None] - _MARGIN).any(axis=1) & present[s : s + _BLOCK]
            hits.append(s + np.flatnonzero(ok))
        return np.concatenate(hits) if hits else np.empty(0, dtype=np.int64)

    def _pass(
        self, source: EmbeddingSource, rows: np.ndarray | None, basis: np.ndarray, index: NearestLabeled
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(z float16 ``[n, k]``, r float32 ``[n]``, similarity float32 ``[n]``) of the source
        rows ``rows`` (all when None), in blocks of at most ``chunk_size`` rows on ``threads``
        threads (``parallel.for_each_block``)."""
        n = len(source) if rows is None else rows.size
        z = np.empty((n, basis.shape[1]), dtype=np.float16)
        r = np.empty(n, dtype=np.float32)
        sim = np.empty(n, dtype=np.float32)

        def block(s: int, e: int) -> None:
            x = source.chunk(s, e) if rows is None else source.take(rows[s:e])
            inv = inverse_norms(x)
            sim[s:e] = index.search(x, inv)[0]
            zb = (x @ basis) * inv[:, None]
            r[s:e] = np.sqrt(np.clip(1.0 - np.einsum("ij,ij->i", zb, zb), 0.0, None)) * (inv > 0)
            z[s:e] = zb

        index.prepare()
        for_each_block(block, n, self.chunk_size, threads=self.threads)
        return z, r, sim

    def _fit_basis(self, source: EmbeddingSource) -> np.ndarray:
        """Uncentred PCA basis float32 ``[D, k]`` of up to ``_FIT_ROWS`` seeded normalised pool rows."""
        n = len(source)
        rows = np.arange(n) if n <= _FIT_ROWS else np.sort(np.random.default_rng(0).choice(n, _FIT_ROWS, replace=False))
        x = l2_normalize(source.take(rows))
        k = min(_COMPONENTS, source.dim)
        _, vec = _top_eigh((x.T @ x).astype(np.float64), k)
        build_counts["projection"] += 1
        return np.ascontiguousarray(vec, dtype=np.float32)

    def _load_projection(self, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        got = _load(self.directory / "projection.npz", ("basis", "ids", "z", "r"))
        if got is None:
            return None
        a = got[1]
        n = a["ids"].size
        if a["basis"].ndim != 2 or a["basis"].shape[0] != dim or a["z"].shape != (n, a["basis"].shape[1]) or a["r"].shape != (n,):
            return None
        return a["basis"], a["ids"], a["z"], a["r"]

    def _save_projection(self, proj: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> None:
        basis, ids, z, r = proj
        _save(self.directory / "projection.npz", {"rows": int(ids.size)}, {"basis": basis, "ids": ids, "z": z, "r": r})

    def _load_knn(
        self, index_ids: np.ndarray, proj: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(similarity float32 ``[P]`` over the projection's rows, labeled ids sorted) when it is
        over the same pool rows and the labeled set it was computed for is a subset of ``index_ids``."""
        got = _load(self.directory / "knn.npz", ("ids", "sim", "labeled_ids"))
        if got is None or proj is None:
            return None
        a = got[1]
        if not np.array_equal(a["ids"], proj[1]) or not np.isin(a["labeled_ids"], index_ids).all():
            return None
        return a["sim"], a["labeled_ids"]

    def _save_knn(self, pool_ids: np.ndarray, sim: np.ndarray, labeled_ids: np.ndarray) -> None:
        _save(self.directory / "knn.npz", {"rows": int(pool_ids.size)}, {"ids": pool_ids, "sim": sim, "labeled_ids": labeled_ids})

    # -- k-means of the pool (hybrid, typiclust) -------------------------------------------------
    def clusters(
        self, ids: np.ndarray, source: EmbeddingSource, k: int, *, seed: int = 0, max_fit: int = 20000, iterations: int = 30
    ) -> tuple[np.ndarray, np.ndarray]:
        """(centres float32 ``[<= k, D]``, cluster int64 ``[N]`` of each pool row) of a k-means of the
        pool (``coldstart.fit_clusters``). It depends on the embeddings only, so it is fitted once
        per model version and ``k``; pool rows it has not seen are assigned to its centres."""
        from .coldstart import _nearest, _normalized, fit_clusters  # coldstart imports strategies, which import this module's users

        ids = np.asarray(ids, dtype=np.int64)
        path = self.directory / f"clusters-k{int(k)}-s{int(seed)}-f{int(max_fit)}-i{int(iterations)}.npz"
        got = _load(path, ("centres", "ids", "assign"))
        if got is not None and got[1]["centres"].ndim == 2 and got[1]["centres"].shape[1] == source.dim:
            centres, known, assign = got[1]["centres"], got[1]["ids"], got[1]["assign"]
        else:
            centres, assign, _ = fit_clusters(source, k, max_fit=max_fit, iterations=iterations, seed=seed, chunk_size=self.chunk_size)
            order = np.argsort(ids)
            known, assign = ids[order], assign[order]
            build_counts["clusters"] += 1
            _save(path, {"k": int(k)}, {"centres": centres, "ids": known, "assign": assign})
        unseen = np.flatnonzero(~np.isin(ids, known))
        if unseen.size:
            new = np.concatenate([_nearest(_normalized(source.take(unseen[s : s + self.chunk_size]), "embeddings"), centres)[0]
                                  for s in range(0, unseen.size, self.chunk_size)])  # fmt: skip
            all_ids = np.concatenate([known, ids[unseen]])
            order = np.argsort(all_ids)
            known, assign = all_ids[order], np.concatenate([assign, new])[order]
            build_counts["clusters_rows"] += 1
            _save(path, {"k": int(k)}, {"centres": centres, "ids": known, "assign": assign})
        return centres, assign[np.searchsorted(known, ids)]

    # -- typicality of the pool's clusters (hybrid, typiclust) -----------------------------------
    def typicality(self, ids: np.ndarray) -> TypicalityMemo:
        """The memo of ``typical_diverse``'s per-cluster typicality for the pool rows of sample ids
        ``ids`` int64 ``[N]`` (in pool order), loaded from ``typicality.npz``; saved there when a
        selection adds to it. Entries hold for this version's embeddings, whatever the labels."""
        path = self.directory / "typicality.npz"
        got = _load(path, ("keys", "sizes", "values"))
        entries: dict[bytes, np.ndarray] = {}
        if got is not None:
            keys, sizes, values = got[1]["keys"], got[1]["sizes"], got[1]["values"]
            if keys.ndim == 2 and sizes.shape == (keys.shape[0],) and int(sizes.sum()) == values.size:
                parts = np.split(values, np.cumsum(sizes)[:-1]) if sizes.size else []
                entries = {bytes(k): v for k, v in zip(keys, parts, strict=True)}

        def save(memo: dict[bytes, np.ndarray]) -> None:
            keys = np.array([np.frombuffer(k, dtype=np.uint8) for k in memo], dtype=np.uint8).reshape(len(memo), 16)
            sizes = np.array([v.size for v in memo.values()], dtype=np.int64)
            values = np.concatenate(list(memo.values())) if memo else np.empty(0, np.float64)
            _save(path, {"entries": len(memo)}, {"keys": keys, "sizes": sizes, "values": values.astype(np.float64)})
            build_counts["typicality"] += 1

        return TypicalityMemo(np.asarray(ids, dtype=np.int64), entries, save)
