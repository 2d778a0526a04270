"""Uncertainty scores from class probabilities: pure numpy, higher = more informative.

All helpers take ``probs`` float32 ``[N, C]`` (rows are softmax outputs) and return float32 ``[N]``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["entropy", "least_confidence", "margin", "uncertainty_scores"]

_ROWS = 262_144  # rows per block, to keep temporaries at ~C * 1 MB


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """``1 - max_c p_c``, float32 ``[N]`` in ``[0, 1 - 1/C]``."""
    p = np.asarray(probs, dtype=np.float32)
    out: np.ndarray = (np.float32(1.0) - p.max(axis=1)).astype(np.float32, copy=False)
    return out


def margin(probs: np.ndarray) -> np.ndarray:
    """``1 - (p_(1) - p_(2))`` (top-1 minus top-2 probability), float32 ``[N]`` in ``[0, 1]``."""
    p = np.asarray(probs, dtype=np.float32)
    out = np.empty(p.shape[0], dtype=np.float32)
    for s in range(0, p.shape[0], _ROWS):
        block = p[s : s + _ROWS]
        top2 = np.partition(block, block.shape[1] - 2, axis=1)[:, -2:]
        out[s : s + _ROWS] = 1.0 - (top2[:, 1] - top2[:, 0])
    return out


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy normalised by ``log(C)``, float32 ``[N]`` in ``[0, 1]``."""
    p = np.asarray(probs, dtype=np.float32)
    n, c = p.shape
    out = np.empty(n, dtype=np.float32)
    scale = np.float32(1.0 / np.log(c)) if c > 1 else np.float32(0.0)
    for s in range(0, n, _ROWS):
        block = np.clip(p[s : s + _ROWS], 1e-12, 1.0)
        h = -(block * np.log(block)).sum(axis=1)
        out[s : s + _ROWS] = np.clip(h * scale, 0.0, 1.0)
    return out


def uncertainty_scores(probs: np.ndarray) -> dict[str, np.ndarray]:
    """All three uncertainty scores: ``{"least_confidence", "margin", "entropy"}``, each float32 ``[N]``."""
    return {
        "least_confidence": least_confidence(probs),
        "margin": margin(probs),
        "entropy": entropy(probs),
    }
