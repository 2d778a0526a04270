"""A scoring box's outbox: images on their way to the central pool, durable on local disk.

Each image is one file ``<root>/<sha256><suffix>``, written atomically and fsynced (file and
folder) before ``put`` returns, so an image the box acknowledged survives a kill -9 or a power cut.
The same image queued twice is one file. :class:`Courier` sends the oldest files in batches and
deletes them once the central service has answered for them; a box killed between the answer and
the delete sends them again, and the central pool, which deduplicates by SHA-256, keeps one sample
(``created: false`` the second time): nothing is lost and nothing is stored twice.

Failures: while the central service is unreachable (network, 5xx, 429) the courier waits with
exponential backoff (``min_backoff_s`` doubling to ``max_backoff_s``, with jitter) and ``wake()``
retries at once (the follower calls it when the central side answers again). An image the central
service refuses for itself (400, 413, 415, 422: undecodable there, over its limits) is moved to
``<root>/rejected/`` with a ``.reason`` file beside it, never deleted; a refused key (401, 403)
keeps everything and retries at the longest backoff.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CentralRefused, CentralUnavailable, EdgeALError, InvalidInput
from .fsutil import atomic_write, fsync_dir

__all__ = ["Courier", "Outbox", "OutboxFull", "Parcel"]

log = logging.getLogger(__name__)

_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}
_ITEM_STATUSES = {400, 413, 415, 422}  # the central service will never take this image as it is


class OutboxFull(EdgeALError):
    """The outbox holds ``max_bytes`` already: the image was scored but not queued."""


@dataclass(frozen=True)
class Parcel:
    """One queued image: its SHA-256 (hex), file and size in bytes."""

    sha256: str
    path: Path
    size: int

    @property
    def filename(self) -> str:
        return self.path.name


class Outbox:
    """Queued images under ``root`` (at most ``max_bytes`` in all), oldest first."""

    def __init__(self, root: str | Path, max_bytes: int = 2 << 30) -> None:
        if not isinstance(max_bytes, int) or max_bytes < 1:
            raise InvalidInput(f"The 'max_bytes' parameter must be an int >= 1. Got {max_bytes!r} instead.")
        self.root = Path(root)
        self.rejected_dir = self.root / "rejected"
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, Parcel] = OrderedDict()
        self._bytes = 0
        self.delivered = 0  # since start: new samples in the central pool
        self.duplicates = 0  # since start: delivered again, already in the pool (after a kill, or sent by another box)
        self._scan()

    def _scan(self) -> None:
        """Pending files, oldest first; temp files of a write cut short by a kill are removed."""
        found = []
        for entry in os.scandir(self.root):
            if not entry.is_file():
                continue
            if entry.name.startswith("."):
                os.unlink(entry.path)  # never acknowledged: atomic_write had not renamed it
                continue
            sha = entry.name.split(".", 1)[0]
            if len(sha) == 64:
                st = entry.stat()
                found.append((st.st_mtime_ns, entry.name, Parcel(sha, Path(entry.path), st.st_size)))
        for _, _, parcel in sorted(found):
            self._pending[parcel.sha256] = parcel
            self._bytes += parcel.size

    def put(self, data: bytes, image_format: str = "") -> str:
        """Queue an image (bytes as received; ``image_format`` as ``images.probe`` names it); durable when
        this returns. Returns its SHA-256. ``OutboxFull`` when it would pass ``max_bytes``."""
        sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            if sha in self._pending:
                return sha
            if self._bytes + len(data) > self.max_bytes:
                raise OutboxFull(
                    f"The outbox holds {self._bytes:,} bytes in {len(self._pending)} images and its limit is {self.max_bytes:,}: "
                    "the image was scored but not queued. The central service has been unreachable for long; raise "
                    "EDGE_AL_OUTBOX_MAX_BYTES or restore the network."
                )
            self._bytes += len(data)  # reserved now, so parallel puts cannot pass the limit together
        path = self.root / f"{sha}{_SUFFIXES.get(image_format.upper(), '.img')}"
        try:
            atomic_write(path, lambda f: f.write(data))
        except BaseException:
            with self._lock:
                self._bytes -= len(data)
            raise
        with self._lock:
            if sha in self._pending:  # queued by a parallel request meanwhile: one file, counted once
                self._bytes -= len(data)
            else:
                self._pending[sha] = Parcel(sha, path, len(data))
        return sha

    def peek(self, n: int) -> list[Parcel]:
        """The ``n`` oldest queued images (they stay queued until ``done`` or ``reject``)."""
        with self._lock:
            out: list[Parcel] = []
            for parcel in self._pending.values():
                if len(out) >= n:
                    break
                out.append(parcel)
            return out

    def done(self, parcels: list[Parcel], created: list[bool]) -> None:
        """The central service holds these now: delete their files (one folder fsync for the batch)."""
        for parcel in parcels:
            parcel.path.unlink(missing_ok=True)
        fsync_dir(self.root)
        with self._lock:
            for parcel in parcels:
                if self._pending.pop(parcel.sha256, None) is not None:
                    self._bytes -= parcel.size
            self.delivered += sum(1 for c in created if c)
            self.duplicates += sum(1 for c in created if not c)

    def reject(self, parcel: Parcel, reason: str) -> None:
        """Set an image aside for good (``rejected/``, with the reason beside it): never sent again, never deleted."""
        target = self.rejected_dir / parcel.path.name
        atomic_write(target.with_name(target.name + ".reason"), lambda f: f.write(reason.encode("utf-8")))
        if parcel.path.exists():
            os.replace(parcel.path, target)
            fsync_dir(self.rejected_dir)
            fsync_dir(self.root)
        with self._lock:
            if self._pending.pop(parcel.sha256, None) is not None:
                self._bytes -= parcel.size
        log.warning("outbox: %s set aside in rejected/: %s", parcel.path.name, reason)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            pending, size = len(self._pending), self._bytes
        rejected = sum(1 for p in self.rejected_dir.iterdir() if p.is_file() and not p.name.endswith(".reason"))
        return {"pending": pending, "pending_bytes": size, "max_bytes": self.max_bytes, "delivered": self.delivered,
                "duplicates": self.duplicates, "rejected": rejected}  # fmt: skip


Upload = Callable[[list[tuple[str, bytes]]], list[dict[str, Any]]]


class Courier:
    """A thread that empties an :class:`Outbox` into the central pool through ``upload``
    (``HttpCentral.upload``: ``(filename, bytes)`` pairs -> one result per image with ``created``)."""

    def __init__(self, outbox: Outbox, upload: Upload, *, batch: int = 16, min_backoff_s: float = 0.5, max_backoff_s: float = 30.0) -> None:
        if not isinstance(batch, int) or not 1 <= batch <= 64:
            raise InvalidInput(f"The 'batch' parameter must be an int in [1, 64]. Got {batch!r} instead.")
        if not 0 < float(min_backoff_s) <= float(max_backoff_s):
            raise InvalidInput(f"Backoff must satisfy 0 < min <= max. Got min {min_backoff_s!r}, max {max_backoff_s!r} instead.")
        self.outbox = outbox
        self.upload = upload
        self.batch = batch
        self.min_backoff_s = float(min_backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self._backoff = 0.0
        self._retry_at = 0.0  # time.monotonic() before which a failed delivery is not retried
        self._singles = 0  # after a refused batch without per-image errors: send this many one by one
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_ok_at: float | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="edge-al-courier", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def wake(self) -> None:
        """Try now, backoff or not (the follower reached the central service again)."""
        self._retry_at = 0.0
        self._wake.set()

    def nudge(self) -> None:
        """An image was queued: send it soon, unless the courier is backing off."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            sent = 0
            if time.monotonic() >= self._retry_at:
                try:
                    sent = self.send_once()
                except Exception as exc:  # never let the thread die: the outbox keeps everything
                    log.exception("outbox: delivery failed unexpectedly")
                    self._failed(f"{type(exc).__name__}: {exc}", self.max_backoff_s)
            if sent:
                continue
            wait = self._retry_at - time.monotonic() if self._retry_at else self.max_backoff_s
            self._wake.wait(max(0.0, min(wait, self.max_backoff_s)))
            self._wake.clear()

    def send_once(self) -> int:
        """Send one batch of the oldest images; returns how many left the outbox (0: nothing to send,
        or a failure, after which ``_backoff`` says how long to wait)."""
        parcels = self.outbox.peek(1 if self._singles else self.batch)
        if not parcels:
            return 0
        images, ready = self._read(parcels)
        if not ready:
            return len(parcels)
        try:
            results = self.upload(images)
        except CentralUnavailable as exc:
            self._failed(str(exc), min(self.max_backoff_s, max(self.min_backoff_s, self._backoff * 2)))
            return 0
        except CentralRefused as exc:
            return self._refused(ready, exc)
        self.outbox.done(ready, [bool(r.get("created", True)) for r in results])
        self._singles = max(0, self._singles - 1)
        self._backoff = self._retry_at = 0.0
        self.last_ok_at, self.last_error = time.time(), None
        return len(ready)

    def _read(self, parcels: list[Parcel]) -> tuple[list[tuple[str, bytes]], list[Parcel]]:
        """The bytes of each parcel, checked against its name; a file that went missing or no longer
        matches its SHA-256 (a disk fault) is set aside."""
        images, ready = [], []
        for parcel in parcels:
            try:
                data = parcel.path.read_bytes()
            except OSError as exc:
                self.outbox.reject(parcel, f"unreadable on the box's disk ({type(exc).__name__})")
                continue
            if hashlib.sha256(data).hexdigest() != parcel.sha256:
                self.outbox.reject(parcel, "its bytes no longer match its SHA-256 (damaged on the box's disk)")
                continue
            images.append((parcel.filename, data))
            ready.append(parcel)
        return images, ready

    def _refused(self, parcels: list[Parcel], exc: CentralRefused) -> int:
        if exc.status in (401, 403) or exc.status not in _ITEM_STATUSES:
            self._failed(f"{exc} (kept; retrying)", self.max_backoff_s)
            return 0
        indexed = {}
        for e in exc.errors:
            i = e.get("index")
            if isinstance(i, int) and 0 <= i < len(parcels):
                indexed[i] = str(e.get("detail", ""))
        for i, detail in indexed.items():
            self.outbox.reject(parcels[i], f"the central service refused it ({exc.status}): {detail}")
        if indexed:
            return len(indexed)  # the others go again at once
        if len(parcels) > 1:
            self._singles = len(parcels)  # a refusal of the whole batch: send one by one to find the image
            self._wake.set()
            return 0
        self.outbox.reject(parcels[0], str(exc))
        return 1

    def _failed(self, why: str, backoff: float) -> None:
        if why != self.last_error:
            log.warning("outbox: %s", why)
        self.last_error = why
        self._backoff = backoff
        self._retry_at = time.monotonic() + backoff * random.uniform(0.5, 1.0)

    def stats(self) -> dict[str, Any]:
        return {**self.outbox.stats(), "last_ok_at": self.last_ok_at, "last_error": self.last_error, "backoff_s": self._backoff}
