"""Turning per-sample scores into a batch: deterministic top-n, rank normalisation, and the
class-stratified, diversity-aware greedy used by the hybrid strategy."""

from __future__ import annotations

import math

import numpy as np

from .embeddings import EmbeddingSource
from .novelty import l2_normalize

__all__ = ["rank_normalize", "stratified_diverse", "top_n"]


def top_n(scores: np.ndarray, candidates: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` candidates with the highest score, best first.

    ``scores`` float ``[N]`` over the whole pool; ``candidates`` int64 ``[K]`` ascending pool
    positions; returns int64 ``[min(n, K)]``. Ties go to the lower pool position; NaN ranks last.
    """
    s = np.nan_to_num(scores[candidates].astype(np.float64), nan=-np.inf)
    k = s.size
    n = min(n, k)
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    if n < k:
        kth = np.partition(s, k - n)[k - n]  # the n-th largest value
        above = np.flatnonzero(s > kth)
        ties = np.flatnonzero(s == kth)[: n - above.size]
        pick = np.concatenate([above, ties])
    else:
        pick = np.arange(k)
    pick = pick[np.lexsort((pick, -s[pick]))]
    out: np.ndarray = candidates[pick].astype(np.int64, copy=False)
    return out


def rank_normalize(x: np.ndarray) -> np.ndarray:
    """Average ranks of ``x`` float ``[K]`` scaled to ``[0, 1]`` (ties share a rank), float32 ``[K]``.

    Puts scores with different scales (entropy, FRE, distances) on one footing.
    """
    k = x.size
    if k == 0:
        return np.empty(0, dtype=np.float32)
    if k == 1:
        return np.ones(1, dtype=np.float32)
    xs = np.nan_to_num(x.astype(np.float64), nan=-np.inf)
    order = np.argsort(xs, kind="stable")
    sorted_x = xs[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_x[1:] != sorted_x[:-1])))
    ends = np.concatenate((starts[1:], [k]))
    avg = (starts + ends - 1) / 2.0
    ranks = np.empty(k, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return (ranks / (k - 1)).astype(np.float32)


class _ClassQueue:
    """Candidates of one predicted class, best first, with embeddings fetched lazily in blocks."""

    def __init__(self, positions: np.ndarray, pool_index: np.ndarray, block: int) -> None:
        self.positions = positions  # into the candidate arrays
        self.pool_index = pool_index  # pool rows, same order
        self.block = block
        self.cursor = 0
        self._emb: np.ndarray | None = None
        self._emb_start = 0

    def exhausted(self) -> bool:
        return self.cursor >= self.positions.size

    def embedding(self, source: EmbeddingSource) -> np.ndarray:
        """Normalised embedding of the row at the cursor, float32 ``[D]``."""
        emb = self._emb
        if emb is None or not self._emb_start <= self.cursor < self._emb_start + emb.shape[0]:
            stop = min(self.cursor + self.block, self.pool_index.size)
            emb = l2_normalize(source.take(self.pool_index[self.cursor : stop]))
            self._emb, self._emb_start = emb, self.cursor
        row: np.ndarray = emb[self.cursor - self._emb_start]
        return row


def stratified_diverse(
    candidates: np.ndarray,
    score: np.ndarray,
    predicted: np.ndarray,
    class_order: np.ndarray,
    n: int,
    source: EmbeddingSource,
    *,
    similarity_threshold: float = 0.95,
    candidate_factor: int = 10,
) -> np.ndarray:
    """Round-robin over predicted classes, skipping near-duplicates of what is already chosen.

    ``candidates`` int64 ``[K]`` pool rows, ``score`` float ``[K]`` (higher first), ``predicted``
    int ``[K]`` predicted class, ``class_order`` int ``[C]`` the visiting order of classes.
    Each class offers its best ``candidate_factor * n`` candidates, best first. In every round
    each class (in ``class_order``) contributes its next candidate whose cosine similarity to
    every already selected row is ``<= similarity_threshold``; candidates above it are set aside.
    When all classes are exhausted before ``n`` rows are chosen, the set-aside candidates fill the
    batch, again round-robin across classes and best first, under a threshold relaxed in steps
    (halfway to 1, 80% of the way, then anything): diversity is a penalty, not a hard filter. ``similarity_threshold``
    of 1.0 or more switches the diversity check off. Only the rows visited are read from
    ``source`` (in blocks). Returns positions into ``candidates``, int64 ``[min(n, K)]``, in
    selection order.
    """
    n = min(n, candidates.size)
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    queues = _class_queues(candidates, score, predicted, class_order, n, max(1, candidate_factor) * n)
    diverse = similarity_threshold < 1.0
    picker = _Picker(n, source.dim if diverse else None)
    deferred = _round_robin(picker, queues, source, similarity_threshold, diverse)
    # Not enough diverse rows: relax the threshold in steps (the last accepts anything) and
    # go round-robin over the set-aside rows again.
    relaxed = [similarity_threshold + (1.0 - similarity_threshold) * f for f in (0.5, 0.8)]
    for threshold in [*relaxed, np.inf]:
        _fill_from(picker, deferred, threshold)
    # Each class offers min(count, cap) rows and cap >= n, so the visited rows always suffice.
    assert len(picker.chosen) == n
    return np.asarray(picker.chosen, dtype=np.int64)


def _class_queues(
    candidates: np.ndarray, score: np.ndarray, predicted: np.ndarray, class_order: np.ndarray, n: int, cap: int
) -> list[_ClassQueue]:
    """One queue per predicted class present, in ``class_order``: its best ``cap`` candidates, best first."""
    order = np.lexsort((candidates, -score.astype(np.float64), predicted))
    sorted_pred = predicted[order]
    present = set(np.unique(sorted_pred).tolist())
    visiting = [int(c) for c in class_order if c in present]
    block = min(cap, max(16, 2 * max(1, math.ceil(n / max(1, len(visiting))))))
    queues = []
    for c in visiting:
        lo, hi = (int(v) for v in np.searchsorted(sorted_pred, [c, c + 1]))
        class_pos = order[lo : min(hi, lo + cap)]
        queues.append(_ClassQueue(class_pos, candidates[class_pos], block))
    return queues


class _Picker:
    """The rows chosen so far, with their normalised embeddings (float32 ``[n, D]``) when diversity is on."""

    def __init__(self, n: int, dim: int | None) -> None:
        self.n = n
        self.chosen: list[int] = []
        self.emb = np.empty((n, dim), dtype=np.float32) if dim is not None else None

    @property
    def full(self) -> bool:
        return len(self.chosen) >= self.n

    def too_similar(self, x: np.ndarray | None, threshold: float) -> bool:
        if self.emb is None or x is None or not self.chosen:
            return False
        return float((self.emb[: len(self.chosen)] @ x).max()) > threshold

    def accept(self, pos: int, x: np.ndarray | None) -> None:
        if self.emb is not None and x is not None:
            self.emb[len(self.chosen)] = x
        self.chosen.append(pos)


def _round_robin(
    picker: _Picker, queues: list[_ClassQueue], source: EmbeddingSource, threshold: float, diverse: bool
) -> list[list[tuple[int, np.ndarray]]]:
    """Each class in turn gives its next candidate not too similar to the chosen ones; returns the
    candidates set aside per class, best first, with their normalised embeddings."""
    deferred: list[list[tuple[int, np.ndarray]]] = [[] for _ in queues]
    active = list(range(len(queues)))
    while not picker.full and active:
        for qi in active:
            q = queues[qi]
            while not q.exhausted():
                pos = int(q.positions[q.cursor])
                x = q.embedding(source) if diverse else None
                q.cursor += 1
                if x is not None and picker.too_similar(x, threshold):
                    deferred[qi].append((pos, x))
                    continue
                picker.accept(pos, x)
                break
            if picker.full:
                break
        active = [qi for qi in active if not queues[qi].exhausted()]
    return deferred


def _fill_from(picker: _Picker, deferred: list[list[tuple[int, np.ndarray]]], threshold: float) -> None:
    """Round-robin over the set-aside rows, taking each class's best one under ``threshold``."""
    while not picker.full and any(deferred):
        progressed = False
        for items in deferred:
            for j, (pos, x) in enumerate(items):
                if not picker.too_similar(x, threshold):
                    picker.accept(pos, x)
                    del items[j]
                    progressed = True
                    break
            if picker.full:
                break
        if not progressed:
            break
