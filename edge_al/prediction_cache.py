"""A model version's predictions as arrays on disk, so that ``/v1/queue`` reads no million SQL rows per call.

``<embeddings>/<version>.predictions.npz`` holds ``ids`` (int64 ``[N]``, ascending), ``probs``
(float32 ``[N, C]``) and the ``stamp`` of the store's predictions they were read under
(``Store.prediction_stamp``: renewed in the transaction of every ``put_predictions`` and
``delete_predictions`` of the version, by any process on the same database). A read checks the
stamp (one indexed row); when it differs the rows are read from the store again and the file is
rewritten (``fsutil.atomic_write``: a temporary file renamed into place). The stamp is read before the rows, so
a write that lands between the two leaves the file under the older stamp: read again next time.

A workspace that cannot be written still answers: the file is then not kept.
"""

from __future__ import annotations

import contextlib
import zipfile
from pathlib import Path

import numpy as np

from .fsutil import atomic_write
from .store import Store

__all__ = ["PredictionCache"]


class PredictionCache:
    """The predictions of one model version kept in ``path`` (an ``.npz`` file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self, store: Store, version: str) -> tuple[np.ndarray, np.ndarray]:
        """``(sample_ids int64 [N], probs float32 [N, C])`` of ``version``, ascending ids: what
        ``store.predictions(version)`` returns, from the file while the store's stamp holds."""
        stamp = store.prediction_stamp(version)
        cached = self._read(stamp)
        if cached is not None:
            return cached
        ids, probs = store.predictions(version)
        self._write(stamp, ids, probs)
        return ids, probs

    def _read(self, stamp: str) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if str(z["stamp"]) != stamp:
                    return None
                return z["ids"], z["probs"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent, torn or foreign: read the store
            return None

    def _write(self, stamp: str, ids: np.ndarray, probs: np.ndarray) -> None:
        with contextlib.suppress(OSError):  # a read-only workspace still answers, from the store
            atomic_write(self.path, lambda f: np.savez(f, ids=ids, probs=probs, stamp=np.array(stamp)))
