"""Test builders: the synthetic fixtures (export.tools.fixtures), the digits pool, a spying embedding source."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_al.acquisition import ArrayEmbeddings
from export.tools.fixtures import build_tiny_ir, publish_tiny, shape_image, write_jpegs, write_shape_images

__all__ = ["SpySource", "build_tiny_ir", "publish_tiny", "shape_image", "write_digit_images", "write_jpegs", "write_shape_images"]


def write_digit_images(root: Path, n: int | None = None, size: int = 32, by_class: bool = True) -> list[tuple[Path, str]]:
    """sklearn digits as PNGs (``root/d<k>/...`` when by_class); returns (path, label) pairs."""
    from export.tools.digits import write_digits

    return write_digits(root, size, by_class=by_class, limit=n)


class SpySource(ArrayEmbeddings):
    """An in-memory embedding source that records the largest ``chunk`` read and the rows read
    with ``take``, to check that a strategy's memory stays bounded by ``chunk_size``."""

    def __init__(self, array: np.ndarray) -> None:
        super().__init__(array)
        self.max_chunk = 0
        self.taken = 0

    def chunk(self, start: int, stop: int) -> np.ndarray:
        self.max_chunk = max(self.max_chunk, stop - start)
        return super().chunk(start, stop)

    def take(self, indices: np.ndarray) -> np.ndarray:
        self.taken += len(indices)
        return super().take(indices)


def int8_weight_range(model: object) -> tuple[int, int]:
    """``(number of INT8 weight constants, their largest |value|)`` of an OpenVINO model's full
    convolutions and matrix products: with NNCF's overflow fix those weights fit 7 bits (<= 64), so
    u8 x s8 pair sums cannot saturate on CPUs without VNNI. Depthwise weights ([G, 1, 1, k, k]),
    which NNCF leaves at 8 bits (no pair sums there), are not counted."""
    import openvino as ov

    tops = []
    for op in model.get_ordered_ops():  # type: ignore[attr-defined]
        if op.get_type_name() != "Constant" or op.get_output_element_type(0) != ov.Type.i8:
            continue
        data = op.get_data()
        if data.ndim == 5 and data.shape[1:3] == (1, 1):
            continue
        tops.append(int(np.abs(data.astype(np.int64)).max()))
    return len(tops), max(tops, default=0)
