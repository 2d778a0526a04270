"""A scoring box: scores for its line from a local copy of the active model, holds no state of the loop.

``edge-al serve --role scoring`` composes it: a ``ModelHolder`` over the box's own registry
(``<home>/models``), a :class:`~edge_al.follow.Follower` of the central registry (over HTTP, or a
mounted folder), and an :class:`~edge_al.outbox.Outbox` with its :class:`~edge_al.outbox.Courier`
for the images it sends to the central pool. No SQLite store, no jobs, no torch.

Settings (:class:`BoxSettings`), lowest first: the defaults here, ``EDGE_AL_*`` variables (read by
``edge_al.config.env_values``), command-line options:

- ``EDGE_AL_CENTRAL_URL``: the central service (``http://central:8000``); models come from it
  unless a folder is named, and queued images go to it.
- ``EDGE_AL_CENTRAL_KEY`` or ``EDGE_AL_CENTRAL_KEY_FILE``: a scorer key of the central service.
  The box presents it upstream and accepts it from the line systems that call the box.
- ``EDGE_AL_CENTRAL_FOLDER``: the central registry folder mounted on the box (models only).
- ``EDGE_AL_FOLLOW_POLL_S`` (5): seconds between polls of the central side's active version.
- ``EDGE_AL_UPLOAD_FRACTION`` (0): the share of images scored without ``?store=true`` that are sent
  too, chosen by SHA-256 (the same image always gets the same answer).
- ``EDGE_AL_OUTBOX_MAX_BYTES`` (2 GiB), ``EDGE_AL_OUTBOX_BATCH`` (16 images per upload),
  ``EDGE_AL_OUTBOX_MAX_BACKOFF_S`` (30): the outbox's bounds.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .central import CentralSource, FolderCentral, HttpCentral
from .config import Settings, env_values
from .errors import Conflict, InvalidInput
from .follow import Follower
from .outbox import Courier, Outbox, OutboxFull
from .registry import Registry

__all__ = ["BOX_ENV", "BoxSettings", "ScoringBox"]

log = logging.getLogger(__name__)

BOX_ENV: dict[str, Callable[[str], Any]] = {
    "CENTRAL_URL": str,
    "CENTRAL_KEY": str,
    "CENTRAL_KEY_FILE": str,
    "CENTRAL_FOLDER": str,
    "FOLLOW_POLL_S": float,
    "UPLOAD_FRACTION": float,
    "OUTBOX_MAX_BYTES": int,
    "OUTBOX_BATCH": int,
    "OUTBOX_MAX_BACKOFF_S": float,
}


@dataclass(frozen=True)
class BoxSettings:
    """Where a scoring box follows models from and how it sends images (see the module docstring)."""

    central_url: str | None = None
    central_key: str = ""
    central_folder: Path | None = None
    poll_s: float = 5.0
    upload_fraction: float = 0.0
    outbox_max_bytes: int = 2 << 30
    outbox_batch: int = 16
    max_backoff_s: float = 30.0
    timeout_s: float = 10.0

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> BoxSettings:
        """Defaults, then ``EDGE_AL_*`` variables, then ``overrides`` (``None`` values ignored)."""
        try:
            env = env_values(BOX_ENV, environ)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        values: dict[str, Any] = {
            "central_url": env.get("CENTRAL_URL"),
            "central_key": env.get("CENTRAL_KEY", ""),
            "central_folder": env.get("CENTRAL_FOLDER"),
            "poll_s": env.get("FOLLOW_POLL_S"),
            "upload_fraction": env.get("UPLOAD_FRACTION"),
            "outbox_max_bytes": env.get("OUTBOX_MAX_BYTES"),
            "outbox_batch": env.get("OUTBOX_BATCH"),
            "max_backoff_s": env.get("OUTBOX_MAX_BACKOFF_S"),
        }
        key_file = (overrides or {}).get("central_key_file") or env.get("CENTRAL_KEY_FILE")
        if key_file:
            values["central_key"] = _read_key(Path(key_file))
        values.update({k: v for k, v in (overrides or {}).items() if v is not None and k != "central_key_file"})
        if values["central_folder"] is not None:
            values["central_folder"] = Path(values["central_folder"]).expanduser()
        return cls(**{k: v for k, v in values.items() if v is not None}).validated()

    def validated(self) -> BoxSettings:
        if not self.central_url and self.central_folder is None:
            raise InvalidInput("A scoring box follows a central registry: give --central URL (EDGE_AL_CENTRAL_URL) "
                               "or --central-folder DIR (EDGE_AL_CENTRAL_FOLDER).")  # fmt: skip
        if self.central_url and not self.central_key:
            raise InvalidInput("--central needs a scorer key of the central service: EDGE_AL_CENTRAL_KEY, or "
                               "EDGE_AL_CENTRAL_KEY_FILE / --central-key-file naming a file that holds it.")  # fmt: skip
        checks = (
            ("poll_s", self.poll_s, 0.05 <= self.poll_s <= 3600, "a number in [0.05, 3600]"),
            ("upload_fraction", self.upload_fraction, 0.0 <= self.upload_fraction <= 1.0, "a number in [0, 1]"),
            ("outbox_max_bytes", self.outbox_max_bytes, self.outbox_max_bytes >= 1 << 20, "an int >= 1048576"),
            ("outbox_batch", self.outbox_batch, 1 <= self.outbox_batch <= 64, "an int in [1, 64]"),
            ("max_backoff_s", self.max_backoff_s, 0.5 <= self.max_backoff_s <= 3600, "a number in [0.5, 3600]"),
        )
        for name, value, ok, what in checks:
            if not ok:
                raise InvalidInput(f"The {name!r} setting must be {what}. Got {value!r} instead.")
        return self

    def __repr__(self) -> str:  # never the key
        return (
            f"BoxSettings(central_url={self.central_url!r}, central_folder={'set' if self.central_folder else None}, poll_s={self.poll_s})"
        )


def _read_key(path: Path) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InvalidInput(f"The central key file cannot be read ({type(exc).__name__}): give a file that holds the scorer key.") from None
    if not key or any(c.isspace() for c in key):
        raise InvalidInput("The central key file must hold one key (a line such as eal_...), nothing else.")
    return key


class ScoringBox:
    """The follower, the outbox and the courier of one box (the HTTP app holds the model)."""

    def __init__(self, settings: Settings, box: BoxSettings, holder: Any) -> None:
        self.settings = settings
        self.box = box
        self.registry = Registry(settings.registry_dir)
        self.http = HttpCentral(box.central_url, box.central_key, box.timeout_s) if box.central_url else None
        source: CentralSource = FolderCentral(box.central_folder) if box.central_folder is not None else self._http()
        self.outbox = Outbox(settings.home / "outbox", box.outbox_max_bytes)
        self.courier = (
            Courier(self.outbox, self.http.upload, batch=box.outbox_batch, max_backoff_s=box.max_backoff_s) if self.http else None
        )
        self.follower = Follower(source, self.registry, holder, poll_s=box.poll_s, on_reachable=self._reached)

    def _http(self) -> HttpCentral:
        assert self.http is not None  # validated(): a URL when there is no folder
        return self.http

    def _reached(self) -> None:
        if self.courier is not None:
            self.courier.wake()

    def start(self) -> None:
        self.follower.start()
        if self.courier is not None:
            self.courier.start()

    def stop(self) -> None:
        self.follower.stop()
        if self.courier is not None:
            self.courier.stop()

    @property
    def can_send(self) -> bool:
        return self.courier is not None

    def sampled(self, data: bytes) -> bool:
        """Whether an image scored without ``?store=true`` is sent anyway (``upload_fraction``, by SHA-256)."""
        f = self.box.upload_fraction
        return self.can_send and f > 0 and (f >= 1 or int.from_bytes(hashlib.sha256(data).digest()[:4], "big") < f * 2**32)

    def check_can_send(self) -> None:
        """``Conflict`` when the box sends images nowhere (it follows a folder and has no URL)."""
        if self.courier is None:
            raise Conflict("This scoring box sends images nowhere: it follows a folder and has no central service URL "
                           "(EDGE_AL_CENTRAL_URL). Score without ?store=true, or give the box --central.")  # fmt: skip

    def queue(self, data: bytes, image_format: str) -> tuple[str | None, str | None]:
        """Put an image in the outbox: ``(sha256, None)`` once it is durable on the box's disk, or
        ``(None, why)`` when the outbox is full. ``Conflict`` when the box sends images nowhere."""
        self.check_can_send()
        assert self.courier is not None
        try:
            sha = self.outbox.put(data, image_format)
        except OutboxFull as exc:
            return None, str(exc)
        self.courier.nudge()
        return sha, None

    def stats(self) -> dict[str, Any]:
        outbox = self.courier.stats() if self.courier is not None else None
        return {"central": self.follower.stats(), "outbox": outbox}
