"""The pool: ingest image files into the store, and the cache of resized u8 images.

Ingest registers files by content hash (duplicates are reported, not added twice). The store keeps
each image's ref in the images storage (``edge_al.storage``: ``EDGE_AL_IMAGES``, else the workspace):
a file inside that root is kept as its path relative to the root; a file outside it is copied in as
``blobs/<sha256>`` when ``EDGE_AL_IMAGES`` is set (several boxes), and kept as its own absolute
path otherwise (one box, as before). HTTP uploads are written to ``blobs/`` in the images storage.

The cache keeps one sparse file per input size, ``cache/<W>x<H>.u8``, with the image of sample
``id`` at row ``id``, and a one-byte-per-row validity file beside it. A row is marked valid
only after its pixels are written, so a process killed mid-write leaves at worst a row that
is decoded again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import Settings
from .errors import EdgeALError, ImageError
from .images import decode_resized, probe, sha256_of
from .storage import Storage, images_storage, upload_ref
from .store import Sample, Store

__all__ = ["IMAGE_SUFFIXES", "ImageCache", "IngestReport", "expand_paths", "ingest", "ingest_bytes", "read_flags"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
_LIST_SUFFIXES = {".txt", ".lst", ".list"}


@dataclass
class IngestReport:
    added: list[int] = field(default_factory=list)
    duplicates: list[tuple[str, int]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    labeled: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "added": len(self.added),
            "duplicates": len(self.duplicates),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "labeled": self.labeled,
        }


def expand_paths(paths: Iterable[str | Path]) -> Iterator[tuple[Path, str | None]]:
    """Files as given, directories recursively (image suffixes only), text files as path lists.

    Yields ``(path, problem)``; ``problem`` is a reason when the path itself is unusable.
    """
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    yield f.resolve(), None
        elif p.is_file() and p.suffix.lower() in _LIST_SUFFIXES:
            base = p.resolve().parent
            for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line).expanduser()
                    yield from expand_paths([q if q.is_absolute() else base / q])
        elif p.is_file():
            yield p.resolve(), None
        else:
            yield p, "no such file or directory"


def _check_file(path: Path, settings: Settings, storage: Storage) -> tuple[str, int, int, str]:
    """``(sha256, width, height, ref)`` of a file to ingest; its bytes are copied into the storage
    when that is where the ref points."""
    size = path.stat().st_size
    if size > settings.max_file_bytes:
        raise ImageError(f"The file has {size:,} bytes; the limit is {settings.max_file_bytes:,}.")
    data = path.read_bytes()
    info = probe(data, max_pixels=settings.max_pixels, max_bytes=settings.max_file_bytes)
    digest = sha256_of(data)
    ref = storage.ref_for(path)
    if ref is None and settings.images is None:
        ref = str(path)  # one box without EDGE_AL_IMAGES: the file's own path, as before
    elif ref is None:
        ref = upload_ref(digest, info.format)
        if not storage.exists(ref):
            storage.write_bytes(ref, data)
    return digest, info.width, info.height, ref


def ingest(
    store: Store,
    settings: Settings,
    paths: Sequence[str | Path],
    *,
    labels_from_dirs: bool = False,
    annotator: str = "ingest",
    progress: Callable[[Iterable[object]], Iterable[object]] | None = None,
    workers: int = 2,
) -> IngestReport:
    """Register image files; bad files are reported with their reason and skipped."""
    report = IngestReport()
    items = list(expand_paths(paths))
    todo = [p for p, problem in items if problem is None]
    report.skipped += [(str(p), problem) for p, problem in items if problem is not None]

    storage = images_storage(settings)

    def check(path: Path) -> tuple[Path, tuple[str, int, int, str] | str]:
        try:
            return path, _check_file(path, settings, storage)
        except EdgeALError as exc:
            return path, str(exc)
        except OSError as exc:
            return path, f"cannot read the file: {exc.strerror or exc}"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        results: Iterable[tuple[Path, tuple[str, int, int, str] | str]] = ex.map(check, todo)
        if progress is not None:
            results = progress(results)  # type: ignore[assignment]
        for path, res in results:
            if isinstance(res, str):
                report.skipped.append((str(path), res))
                continue
            digest, w, h, ref = res
            sid, created = store.add_sample(digest, ref, w, h, "ingest")
            if created:
                report.added.append(sid)
            else:
                report.duplicates.append((str(path), sid))
            if labels_from_dirs:
                label = path.parent.name
                store.add_label(label)
                if store.add_annotation(sid, "correct", label, annotator):
                    report.labeled += 1
    return report


def ingest_bytes(store: Store, settings: Settings, data: bytes, *, filename: str = "upload", source: str = "upload") -> tuple[Sample, bool]:
    """Validate and register an uploaded image; its bytes are written (atomically, content-addressed)
    to ``blobs/`` in the images storage, and the store keeps that ref."""
    info = probe(data, max_pixels=settings.max_pixels, max_bytes=settings.max_file_bytes)
    digest = sha256_of(data)
    storage = images_storage(settings)
    ref = upload_ref(digest, info.format)
    if not storage.exists(ref):
        storage.write_bytes(ref, data)
    sid, created = store.add_sample(digest, ref, info.width, info.height, source)
    return store.sample(sid), created


def read_flags(fd: int, ids: np.ndarray) -> np.ndarray:
    """bool [len(ids)]: which of the one-byte flags at offsets ``ids`` (int [n]) of the open file
    ``fd`` are 1; one read between the smallest and largest id, missing bytes count as 0."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) == 0:
        return np.zeros(0, dtype=bool)
    lo, hi = int(ids.min()), int(ids.max()) + 1
    raw = os.pread(fd, hi - lo, lo)
    flags = np.zeros(hi - lo, dtype=np.uint8)
    flags[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return flags[ids - lo] == 1


class ImageCache:
    """Resized u8 BGR images per input size, in a sparse file indexed by sample id. A miss is read
    through ``storage`` (``edge_al.storage.images_storage(settings)``) and decoded."""

    def __init__(self, root: str | Path, size: tuple[int, int], storage: Storage | None = None) -> None:
        self.root = Path(root)
        self.storage = storage  # where sample refs are read from; None: refs are local paths
        self.size = (int(size[0]), int(size[1]))
        self.root.mkdir(parents=True, exist_ok=True)
        w, h = self.size
        self.row_bytes = w * h * 3
        base = self.root / f"{w}x{h}"
        self._data_fd = os.open(f"{base}.u8", os.O_RDWR | os.O_CREAT, 0o644)
        self._valid_fd = os.open(f"{base}.valid", os.O_RDWR | os.O_CREAT, 0o644)

    def close(self) -> None:
        for fd in (self._data_fd, self._valid_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> ImageCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def shape(self) -> tuple[int, int, int]:
        w, h = self.size
        return (h, w, 3)

    def has(self, sample_id: int) -> bool:
        return os.pread(self._valid_fd, 1, int(sample_id)) == b"\x01"

    def valid_mask(self, ids: np.ndarray) -> np.ndarray:
        """bool [len(ids)]: which ids are cached (one read of the flags between min and max id)."""
        return read_flags(self._valid_fd, ids)

    def read_rows(self, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Copy the cached images of sample ``ids`` (int64 [n]) into ``out`` (u8 [n, H, W, 3],
        C-contiguous); returns bool [n], which rows were cached and read.

        Consecutive cached ids are read with one ``preadv`` straight into ``out``, so a batch of
        a sorted pool costs one system call and no per-image Python work.
        """
        ids = np.asarray(ids, dtype=np.int64)
        if out.shape != (len(ids), *self.shape) or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous uint8 {[len(ids), *self.shape]}. Got {out.dtype} {list(out.shape)} instead.")
        hit = self.valid_mask(ids)
        if not hit.any():
            return hit
        # runs of positions whose ids are consecutive and all cached
        cont = np.zeros(len(ids), dtype=bool)
        cont[1:] = (np.diff(ids) == 1) & hit[1:] & hit[:-1]
        starts = np.flatnonzero(hit & ~cont)
        for start in starts.tolist():
            stop = start + 1
            while stop < len(ids) and cont[stop]:
                stop += 1
            want = (stop - start) * self.row_bytes
            got = os.preadv(self._data_fd, [out[start:stop].data.cast("B")], int(ids[start]) * self.row_bytes)
            if got != want:  # a short file: keep the rows that were read in full
                hit[start + got // self.row_bytes : stop] = False
        return hit

    def load_ids(self, ids: np.ndarray, samples: Mapping[int, Sample]) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """``(images u8 [n, H, W, 3], failures [(position, reason)])`` for sample ``ids`` (int64 [n]).

        Cached rows are read in runs (``read_rows``); the others are decoded from their
        ``samples[id]`` source file and cached. A failed image is left black.
        """
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros((len(ids), *self.shape), dtype=np.uint8)
        hit = self.read_rows(ids, out)
        failures: list[tuple[int, str]] = []
        for pos in np.flatnonzero(~hit).tolist():
            sample = samples.get(int(ids[pos]))
            if sample is None:
                failures.append((pos, f"sample {int(ids[pos])} is not in the store"))
                continue
            try:
                out[pos] = self.load(sample)
            except EdgeALError as exc:
                failures.append((pos, f"cannot read or decode {sample.path}: {exc}"))
        return out, failures

    def get(self, sample_id: int) -> np.ndarray | None:
        if not self.has(sample_id):
            return None
        raw = os.pread(self._data_fd, self.row_bytes, int(sample_id) * self.row_bytes)
        if len(raw) != self.row_bytes:
            return None
        return np.frombuffer(raw, dtype=np.uint8).reshape(self.shape)

    def put(self, sample_id: int, img: np.ndarray) -> None:
        if img.shape != self.shape or img.dtype != np.uint8:
            raise ValueError(f"Cache rows must be uint8 {self.shape}. Got {img.dtype} {img.shape} instead.")
        os.pwrite(self._data_fd, np.ascontiguousarray(img).tobytes(), int(sample_id) * self.row_bytes)
        os.pwrite(self._valid_fd, b"\x01", int(sample_id))

    def load(self, sample: Sample) -> np.ndarray:
        """The cached image of a sample, decoding and caching it on a miss. Raises ImageError."""
        img = self.get(sample.id)
        if img is not None:
            return img
        try:
            data = self.storage.read_bytes(sample.path) if self.storage is not None else Path(sample.path).read_bytes()
        except OSError as exc:
            raise ImageError(f"Sample {sample.id}: cannot read {sample.path}: {exc.strerror or exc}") from None
        img = decode_resized(data, self.size, sample.width, sample.height)
        self.put(sample.id, img)
        return img

    def load_many(self, samples: Sequence[Sample], executor: ThreadPoolExecutor | None = None) -> tuple[np.ndarray, list[int]]:
        """``(images u8 [n, H, W, 3], failed positions)``; a failed image is left black."""
        out = np.zeros((len(samples), *self.shape), dtype=np.uint8)
        failed: list[int] = []

        def one(i: int) -> None:
            try:
                out[i] = self.load(samples[i])
            except EdgeALError:
                failed.append(i)

        if executor is None:
            for i in range(len(samples)):
                one(i)
        else:
            list(executor.map(one, range(len(samples))))
        return out, sorted(failed)
