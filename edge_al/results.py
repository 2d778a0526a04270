"""Typed model results: the one place that turns raw outputs into label names, top-k and scores.

The engine (``Engine.predict``) returns ``Predictions``, a batch of raw outputs with the labels
and the version that produced them; ``Predictions[i]`` is one image's ``Prediction``. Both are
pure numpy (no openvino), so the service, selection and scripts share them without compiling
anything.

Uncertainty scores are the acquisition package's (``least_confidence``, ``margin``,
``entropy``); novelty (``fre``, ``knn``) is filled in by whoever has a labeled reference
(``edge_al.dispatch.live_novelty``), else it stays ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .acquisition import uncertainty_scores

__all__ = ["SCORE_NAMES", "Prediction", "Predictions", "label_name"]

SCORE_NAMES = ("least_confidence", "margin", "entropy", "fre", "knn")


def label_name(labels: Sequence[str], index: int) -> str:
    """The name of class ``index``; its number as text when the model names fewer classes."""
    return labels[index] if 0 <= index < len(labels) else str(index)


@dataclass(frozen=True)
class Prediction:
    """One image's result.

    ``probs`` f32 [C]; ``top_k`` ((label, probability), ...) best first; ``scores`` maps each of
    ``SCORE_NAMES`` to a float (``fre``/``knn`` are ``None`` without a labeled reference);
    ``embedding`` f32 [D] or ``None`` when it was not asked for; ``source`` the path it came from.
    """

    label: str
    label_index: int
    confidence: float
    top_k: tuple[tuple[str, float], ...]
    probs: np.ndarray
    scores: dict[str, float | None]
    model_version: str
    embedding: np.ndarray | None = None
    source: str | None = None


@dataclass(frozen=True)
class Predictions:
    """A batch of raw outputs with what is needed to read them.

    ``probs`` f32 [N, C], ``embedding`` f32 [N, D], ``labels`` the C class names, ``version`` the
    model version; ``fre``/``knn`` f32 [N] novelty or ``None``. Derived values are computed here
    and nowhere else.
    """

    probs: np.ndarray
    embedding: np.ndarray
    labels: tuple[str, ...]
    version: str
    fre: np.ndarray | None = None
    knn: np.ndarray | None = None
    _unc: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.probs.shape[0])

    @property
    def label_index(self) -> np.ndarray:
        """int64 [N]: the top-1 class of each row (argmax, first on ties)."""
        return np.argmax(self.probs, axis=1).astype(np.int64) if len(self) else np.zeros(0, np.int64)

    @property
    def label_names(self) -> list[str]:
        return [label_name(self.labels, i) for i in self.label_index.tolist()]

    @property
    def confidence(self) -> np.ndarray:
        """f32 [N]: the top-1 probability."""
        return self.probs.max(axis=1).astype(np.float32) if len(self) else np.zeros(0, np.float32)

    def top_k(self, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """``(indices int64 [N, k'], probabilities f32 [N, k'])``, best first, k' = min(k, C);
        ties keep the lower class index first (a stable sort, as the service does)."""
        k = max(1, min(int(k), self.probs.shape[1] if self.probs.ndim == 2 else 1))
        order = np.argsort(-self.probs, axis=1, kind="stable")[:, :k].astype(np.int64)
        return order, np.take_along_axis(self.probs, order, axis=1).astype(np.float32)

    def uncertainty(self) -> dict[str, np.ndarray]:
        """``{"least_confidence", "margin", "entropy"}``, each f32 [N] (computed once)."""
        if not self._unc:
            self._unc.update(uncertainty_scores(np.asarray(self.probs, dtype=np.float32)))
        return self._unc

    def scores(self) -> dict[str, np.ndarray | None]:
        """Every name of ``SCORE_NAMES`` -> f32 [N], or ``None`` for novelty without a reference."""
        return {**self.uncertainty(), "fre": self.fre, "knn": self.knn}

    def with_novelty(self, fre: np.ndarray | None, knn: np.ndarray | None) -> Predictions:
        return Predictions(self.probs, self.embedding, self.labels, self.version, fre, knn, self._unc)

    @staticmethod
    def concat(parts: Sequence[Predictions]) -> Predictions:
        """One batch of the rows of ``parts`` (same model), in order."""
        first = parts[0]
        if len(parts) == 1:
            return first

        def cat(name: str) -> np.ndarray | None:
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else np.concatenate(values)

        probs, emb = np.concatenate([p.probs for p in parts]), np.concatenate([p.embedding for p in parts])
        return Predictions(probs, emb, first.labels, first.version, cat("fre"), cat("knn"))

    def take(self, rows: np.ndarray) -> Predictions:
        """The rows ``rows`` (int or bool index [M]) as a new batch."""
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        return Predictions(self.probs[rows], self.embedding[rows], self.labels, self.version, pick(self.fre), pick(self.knn))

    def __getitem__(self, i: int) -> Prediction:
        return self.take(np.array([i], dtype=np.int64)).rows(top_k=3, embedding=True)[0]

    def rows(self, *, top_k: int = 3, embedding: bool = False, sources: Sequence[str | None] | None = None) -> list[Prediction]:
        """One ``Prediction`` per row (``embedding``: keep each row's embedding)."""
        idx, val = self.top_k(top_k)
        scores = self.scores()
        names = self.label_names
        conf = self.confidence
        out = []
        for i in range(len(self)):
            out.append(
                Prediction(
                    label=names[i],
                    label_index=int(idx[i, 0]),
                    confidence=float(conf[i]),
                    top_k=tuple((label_name(self.labels, int(c)), float(p)) for c, p in zip(idx[i], val[i], strict=True)),
                    probs=self.probs[i],
                    scores={k: (None if v is None else float(v[i])) for k, v in scores.items()},
                    model_version=self.version,
                    embedding=self.embedding[i] if embedding else None,
                    source=None if sources is None else sources[i],
                )
            )
        return out
