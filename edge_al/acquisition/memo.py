"""Per-cluster typicality kept across selections (``typical_diverse``: hybrid, typiclust).

A cluster's typicality estimate reads up to 2,000 of its rows and scores them against each other;
at a 1M-row pool that was most of a ``/v1/queue`` call after a new label. It depends only on the
embeddings of the rows read, and which rows those are depends only on the cluster's members (their
sample ids in pool order), the cluster index and the seed (both seed the member draw), ``k`` and the
member cap. Labels, exclusions and the model's probabilities play no part, so a memo keyed by a
digest of exactly those inputs returns the very values a fresh estimate would. The embeddings are
the caller's to guarantee: keep one memo per model version (``NoveltyCache.typicality``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

__all__ = ["TypicalityMemo"]

_MAX_ENTRIES = 2048  # past this, entries not used by the current call are dropped, oldest first


class TypicalityMemo:
    """Typicality float64 ``[R]`` of the rows a cluster's estimate read, by digest (``key``).

    ``ids`` int64 ``[N]``: the sample id of each pool row of the selection this memo serves;
    ``entries``: digest -> typicality, e.g. loaded from disk; ``save``: called with the entries by
    ``flush`` when they changed. ``hits`` and ``misses`` count lookups (for tests and logs).
    """

    def __init__(
        self,
        ids: np.ndarray,
        entries: dict[bytes, np.ndarray] | None = None,
        save: Callable[[dict[bytes, np.ndarray]], None] | None = None,
    ) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.entries: dict[bytes, np.ndarray] = dict(entries or {})
        self.save = save
        self.hits = 0
        self.misses = 0
        self._used: set[bytes] = set()
        self._changed = False

    def key(self, members: np.ndarray, cluster: int, seed: int, k_neighbors: int, max_members: int) -> bytes:
        """Digest of what a cluster's estimate depends on; ``members`` int ``[m]`` ascending pool rows."""
        h = hashlib.blake2b(digest_size=16)
        h.update(np.array([cluster, seed, k_neighbors, max_members, members.size], dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.ids[members]).tobytes())
        return h.digest()

    def get(self, key: bytes, rows: int) -> np.ndarray | None:
        """The stored typicality for ``key`` when it has ``rows`` values, else None."""
        typ = self.entries.get(key)
        if typ is None or typ.shape != (rows,):
            self.misses += 1
            return None
        self.hits += 1
        self._used.add(key)
        return typ

    def put(self, key: bytes, typ: np.ndarray) -> None:
        self.entries[key] = np.asarray(typ, dtype=np.float64)
        self._used.add(key)
        self._changed = True

    def flush(self) -> None:
        """Hand the entries to ``save`` if they changed (trimmed to ``_MAX_ENTRIES``, used ones kept)."""
        if not self._changed:
            return
        if len(self.entries) > _MAX_ENTRIES:
            stale = [k for k in self.entries if k not in self._used]
            for k in stale[: len(self.entries) - _MAX_ENTRIES]:
                del self.entries[k]
        if self.save is not None:
            self.save(self.entries)
        self._changed = False
