"""scikit-learn's bundled 8x8 digits as images: the demo pool, the simulation's second data set and
the test suite's small real pool all come from here (no download: the data ships with sklearn)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from edge_al.errors import MissingDependency

__all__ = ["digit_images", "write_digits"]


def digit_images(
    size: int = 32, classes: Sequence[int] | None = None, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images u8 [N, size, size] grayscale, digits int64 [N], dataset indices int64 [N])``.

    ``classes`` keeps only those digits; ``limit`` keeps the first ``limit`` images after that.
    """
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise MissingDependency("The digits data ships with scikit-learn: install edge-al[train].") from None
    d = load_digits()
    keep = np.flatnonzero(np.isin(d.target, list(classes))) if classes is not None else np.arange(len(d.images))
    keep = keep[:limit] if limit is not None else keep
    imgs = [(d.images[i] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8) for i in keep]
    resized = (
        np.stack([cv2.resize(x, (size, size), interpolation=cv2.INTER_LINEAR) for x in imgs])
        if len(imgs)
        else np.zeros((0, size, size), np.uint8)
    )
    return resized, d.target[keep].astype(np.int64), keep.astype(np.int64)


def write_digits(
    root: Path, size: int = 32, *, by_class: bool = True, classes: Sequence[int] | None = None, limit: int | None = None
) -> list[tuple[Path, str]]:
    """The digits as PNGs, ``root/d<k>/digit_<i>.png`` (``by_class``) or ``root/digit_<i>.png``;
    returns ``(path, label)`` pairs, label ``d<k>``. Files already there are kept as they are."""
    images, digits, indices = digit_images(size, classes, limit)
    out = []
    for img, k, i in zip(images, digits, indices, strict=True):
        label = f"d{int(k)}"
        path = Path(root) / (label if by_class else "") / f"digit_{int(i):04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            cv2.imwrite(str(path), img)
        out.append((path, label))
    return out
