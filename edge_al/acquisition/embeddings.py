"""Where pool embeddings come from: a protocol and two adapters.

Selection reads a pool of up to ~10^6 x 1024 embeddings in row chunks, so the pool never has to
be resident as float32. ``ArrayEmbeddings`` wraps an in-memory array (any float dtype);
``FileEmbeddings`` reads a raw row-major float16 file with positioned reads (``os.preadv``),
not ``np.memmap``, so resident memory stays bounded by one chunk rather than growing with the
page-mapped file.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["ArrayEmbeddings", "EmbeddingSource", "FileEmbeddings", "as_source", "half_to_float32"]

_TAKE_BLOCK = 8192  # rows gathered per mapping in FileEmbeddings.take
_HALF_BLOCK = 32768  # elements per conversion block: fits in L2
_HALF_SCALE = np.float32(2.0**112)
_HALF_NONFINITE = 0x7C00 << 13


def half_to_float32(half: np.ndarray) -> np.ndarray:
    """Exact float16 -> float32 conversion, float32 array of ``half``'s shape.

    numpy's own cast branches per element on zero/subnormal inputs and runs ~4x slower on
    embeddings that are half zeros (post-ReLU features). This moves the bits instead: sign to
    bit 31, exponent and mantissa shifted left by 13, then one multiply by 2**112 rebiases the
    exponent (subnormals included), in L2-sized blocks. Blocks holding inf/NaN fall back to
    ``astype``.
    """
    h = np.ascontiguousarray(half, dtype=np.float16)
    out = np.empty(h.shape, dtype=np.float32)
    u = h.reshape(-1).view(np.uint16)
    o = out.reshape(-1).view(np.uint32)
    f = out.reshape(-1)
    tmp = np.empty(min(_HALF_BLOCK, u.size), dtype=np.uint32)
    for s in range(0, u.size, _HALF_BLOCK):
        ub, ob, fb = u[s : s + _HALF_BLOCK], o[s : s + _HALF_BLOCK], f[s : s + _HALF_BLOCK]
        tb = tmp[: ub.size]
        np.copyto(ob, ub, casting="unsafe")  # zero-extend
        np.bitwise_and(ob, 0x7FFF, out=tb)
        np.left_shift(tb, 13, out=tb)
        if tb.size and int(tb.max()) >= _HALF_NONFINITE:
            fb[:] = h.reshape(-1)[s : s + _HALF_BLOCK]
            continue
        np.bitwise_and(ob, 0x8000, out=ob)
        np.left_shift(ob, 16, out=ob)
        np.bitwise_or(ob, tb, out=ob)
        np.multiply(fb, _HALF_SCALE, out=fb)
    return out


@runtime_checkable
class EmbeddingSource(Protocol):
    """Row-addressable pool embeddings, ``[N, D]``.

    ``chunk`` and ``take`` return fresh float32 arrays the caller may modify in place.
    """

    def __len__(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def chunk(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a fresh float32 ``[stop - start, D]`` array."""
        ...

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows at ``indices`` (int, any order, repeats allowed) as float32 ``[len(indices), D]``."""
        ...


def _check_range(start: int, stop: int, rows: int) -> None:
    if not 0 <= start <= stop <= rows:
        raise ValueError(f"The chunk range must satisfy 0 <= start <= stop <= {rows}. Got start={start}, stop={stop} instead.")


def _check_indices(indices: np.ndarray, rows: int) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"The 'indices' parameter must be a 1-D integer array. Got shape {idx.shape} and dtype {idx.dtype} instead.")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < 0 or idx.max() >= rows):
        raise ValueError(f"The 'indices' parameter must lie in [0, {rows}). Got values in [{idx.min()}, {idx.max()}] instead.")
    return idx


class ArrayEmbeddings:
    """``EmbeddingSource`` over an in-memory ``[N, D]`` float array (float16/32/64).

    The array is not copied; each ``chunk``/``take`` converts just the requested rows.
    """

    def __init__(self, array: np.ndarray) -> None:
        arr = np.asarray(array)
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(
                f"The 'embeddings' parameter must be a 2-D float array [N, D]. Got shape {arr.shape} and dtype {arr.dtype} instead."
            )
        self.array = arr

    def __len__(self) -> int:
        return int(self.array.shape[0])

    @property
    def dim(self) -> int:
        return int(self.array.shape[1])

    def chunk(self, start: int, stop: int) -> np.ndarray:
        _check_range(start, stop, len(self))
        if self.array.dtype == np.float16:
            return half_to_float32(self.array[start:stop])
        return np.array(self.array[start:stop], dtype=np.float32, copy=True)

    def take(self, indices: np.ndarray) -> np.ndarray:
        idx = _check_indices(indices, len(self))
        return np.asarray(self.array[idx], dtype=np.float32)

    def __repr__(self) -> str:
        return f"ArrayEmbeddings(rows={len(self)}, dim={self.dim}, dtype={self.array.dtype})"


class FileEmbeddings:
    """``EmbeddingSource`` over a raw, headerless, row-major file of float16 rows.

    Row ``i`` of this source starts at byte ``(row_offset + i) * dim * 2`` of ``path``.
    Reads use ``os.preadv`` (positioned, no shared file offset, so it is thread-safe) into a
    fresh buffer; nothing is memory-mapped.
    """

    itemsize = 2  # float16

    def __init__(self, path: str | os.PathLike[str], rows: int, dim: int, row_offset: int = 0) -> None:
        for name, value, low in (
            ("rows", rows, 0),
            ("dim", dim, 1),
            ("row_offset", row_offset, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"The '{name}' parameter must be an int >= {low}. Got {value!r} instead.")
        self.path = os.fspath(path)
        self.rows = int(rows)
        self._dim = int(dim)
        self.row_offset = int(row_offset)
        needed = (self.row_offset + self.rows) * self.row_bytes
        size = os.path.getsize(self.path)
        if size < needed:
            raise ValueError(
                f"The embeddings file {self.path!r} must hold at least {needed} bytes "
                f"({self.row_offset} + {self.rows} float16 rows of dim {self._dim}). "
                f"Got {size} bytes instead."
            )

    @property
    def row_bytes(self) -> int:
        return self._dim * self.itemsize

    def __len__(self) -> int:
        return self.rows

    @property
    def dim(self) -> int:
        return self._dim

    def _read_into(self, fd: int, buf: np.ndarray, first_row: int) -> None:
        """Fill the float16 ``buf`` with rows starting at pool row ``first_row``."""
        view = memoryview(buf.reshape(-1).view(np.uint8).data)
        offset = (self.row_offset + first_row) * self.row_bytes
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"Short read from {self.path!r} at byte {offset + done}.")
            done += got

    def chunk(self, start: int, stop: int) -> np.ndarray:
        _check_range(start, stop, self.rows)
        raw = np.empty((stop - start, self._dim), dtype=np.float16)
        if stop > start:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                self._read_into(fd, raw, start)
            finally:
                os.close(fd)
        return half_to_float32(raw)

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` as float32 ``[n, D]``, gathered in ascending blocks of ``_TAKE_BLOCK``
        rows through a read-only mapping of each block's span (one C gather instead of a read call
        per run of rows: a k-NN update reads ~30,000 scattered rows of a 1M pool), unmapped after
        each block so that the mapped pages stay bounded."""
        idx = _check_indices(indices, self.rows)
        out = np.empty((idx.size, self._dim), dtype=np.float32)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        for s in range(0, idx.size, _TAKE_BLOCK):
            part = sorted_idx[s : s + _TAKE_BLOCK]
            first, last = int(part[0]), int(part[-1])
            span = np.memmap(
                self.path,
                dtype=np.float16,
                mode="r",
                offset=(self.row_offset + first) * self.row_bytes,
                shape=(last - first + 1, self._dim),
            )
            try:
                raw = np.array(span[part - first])
            finally:
                del span
            out[order[s : s + _TAKE_BLOCK]] = half_to_float32(raw)
        return out

    def __repr__(self) -> str:
        return f"FileEmbeddings({self.path!r}, rows={self.rows}, dim={self._dim}, row_offset={self.row_offset})"


def as_source(embeddings: EmbeddingSource | np.ndarray) -> EmbeddingSource:
    """Wrap an ndarray in ``ArrayEmbeddings``; pass an ``EmbeddingSource`` through."""
    if isinstance(embeddings, np.ndarray):
        return ArrayEmbeddings(embeddings)
    for attr in ("chunk", "take", "dim", "__len__"):
        if not hasattr(embeddings, attr):
            raise ValueError(
                "The 'embeddings' parameter must be an [N, D] float ndarray or an EmbeddingSource "
                f"(with __len__, dim, chunk, take). Got {type(embeddings).__name__} instead."
            )
    return embeddings
