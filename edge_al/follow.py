"""A scoring box's copy of the central registry: follow the active version, install it atomically.

:class:`Follower` polls a central source (``edge_al.central``) every ``poll_s`` seconds. When the
central side's active version is not the box's, it downloads the version's line files into a
staging folder of the box's own :class:`~edge_al.registry.Registry`, checks each against the
manifest's size and SHA-256, publishes it (fsync, rename: a kill leaves no half version), compiles
it before activating it (``Registry.promote(v, load=holder.prepare)``: a version that cannot load
is never activated) and hot-swaps the serving model (``ModelHolder.reload``). A rollback on the
central side is followed the same way. The local registry persists, so a box restarted while the
central side is down serves the last version it had.

While the central side is unreachable nothing changes: the box serves what it has and polls again.
A version that failed to install or load is not retried until the central side activates another
(or the box restarts). Old versions beyond ``keep`` (and never the active one) are removed.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .central import CentralSource, Manifest, manifest_of
from .errors import CentralRefused, CentralUnavailable, InvalidInput
from .registry import ModelVersion, Registry

__all__ = ["Follower"]

log = logging.getLogger(__name__)


class _Holder(Protocol):
    """What the follower needs of the serving ``ModelHolder``."""

    @property
    def version(self) -> str | None: ...

    def prepare(self, mv: ModelVersion) -> None: ...

    def reload(self, timeout: float = 60.0) -> bool: ...


class Follower:
    """Keeps ``registry`` (the box's) and ``holder`` on the central ``source``'s active version."""

    def __init__(
        self,
        source: CentralSource,
        registry: Registry,
        holder: _Holder,
        *,
        poll_s: float = 5.0,
        keep: int = 3,
        on_reachable: Callable[[], None] | None = None,
    ) -> None:
        if not float(poll_s) > 0:
            raise InvalidInput(f"The 'poll_s' parameter must be a number > 0. Got {poll_s!r} instead.")
        if not isinstance(keep, int) or keep < 1:
            raise InvalidInput(f"The 'keep' parameter must be an int >= 1. Got {keep!r} instead.")
        self.source = source
        self.registry = registry
        self.holder = holder
        self.poll_s = float(poll_s)
        self.keep = keep
        self.on_reachable = on_reachable
        self._verified: set[str] = set()  # local versions checked against a central manifest
        self._failed: str | None = None  # a central version that would not install or load
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reachable: bool | None = None
        self.central_version: str | None = None
        self.last_ok_at: float | None = None
        self.last_error: str | None = None
        self.last_swap_at: float | None = None

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="edge-al-follower", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception:  # never let the thread die: the box keeps serving what it has
                log.exception("follower: sync failed unexpectedly")
            self._stop.wait(self.poll_s)

    # -- one poll --------------------------------------------------------------------------------
    def sync(self) -> str | None:
        """One poll: install and activate the central side's active version if the box does not
        serve it yet. Returns the version activated now, else None. Never raises for an
        unreachable or refusing central side (``last_error`` says what happened)."""
        try:
            manifest = self.source.active()
        except (CentralUnavailable, CentralRefused) as exc:
            self._unreachable(str(exc))
            return None
        self._reached(manifest.version)
        version = manifest.version
        if version is None or version == self._failed:
            return None
        if self.registry.active_version() == version and self.holder.version == version:
            return None
        try:
            self._ensure_installed(manifest)
            self.registry.promote(version, load=self.holder.prepare)
            self.holder.reload()
        except CentralUnavailable as exc:
            self._unreachable(str(exc))  # the download broke off: the next poll starts it again
            return None
        except Exception as exc:
            self._failed = version
            self.last_error = f"{version} was not activated ({type(exc).__name__}: {exc}); serving {self.holder.version}"
            log.error("follower: %s", self.last_error)
            return None
        self.last_swap_at = time.time()
        log.warning("follower: now serving %s (the central service's active version)", version)
        self._prune(version)
        return version

    def _unreachable(self, why: str) -> None:
        if self.reachable is not False or why != self.last_error:
            log.warning("follower: %s; serving %s", why, self.holder.version or "no model yet")
        self.reachable = False
        self.last_error = why

    def _reached(self, version: str | None) -> None:
        was = self.reachable
        self.reachable, self.central_version, self.last_ok_at = True, version, time.time()
        if version != self._failed:
            self.last_error = None
        if self._failed is not None and version != self._failed:
            self._failed = None  # the central side moved on: a later version may be tried again
        if was is not True and self.on_reachable is not None:
            self.on_reachable()

    def _ensure_installed(self, manifest: Manifest) -> None:
        version = str(manifest.version)
        try:
            local = self.registry.get(version)
        except Exception:
            local = None
        if local is None:
            self._install(manifest)
        elif version not in self._verified:
            self._check_copy(local, manifest)
        self._verified.add(version)

    def _check_copy(self, local: ModelVersion, manifest: Manifest) -> None:
        """The box's copy of a version must be the central one (its meta.json is rewritten by
        ``publish``, so the IR files decide)."""
        mine = {f.name: f for f in manifest_of(local).files}
        for entry in manifest.files:
            if entry.name != "meta.json" and mine.get(entry.name) != entry:
                raise CentralRefused(
                    f"The box's copy of {local.version} differs from the central one ({entry.name}): the central workspace "
                    "was rebuilt? Remove the box's models folder to start over."
                )

    def _install(self, manifest: Manifest) -> None:
        version = str(manifest.version)
        staging = self.registry.staging()
        try:
            for entry in manifest.files:
                self.source.download(version, entry, staging / entry.name)
            meta = json.loads((staging / "meta.json").read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise CentralRefused(f"The meta.json of {version} is not a JSON object.")
            self.registry.publish(staging, meta, version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.warning("follower: installed %s from the central service", version)

    def _prune(self, active: str) -> None:
        """Remove all but the ``keep`` newest versions (never the active one)."""
        old = [mv for mv in self.registry.versions() if mv.version != active][: -self.keep]
        for mv in old:
            shutil.rmtree(mv.path, ignore_errors=True)
            self._verified.discard(mv.version)

    def stats(self) -> dict[str, Any]:
        return {
            "reachable": self.reachable,
            "central_version": self.central_version,
            "last_ok_at": self.last_ok_at,
            "last_error": self.last_error,
            "last_swap_at": self.last_swap_at,
            "poll_s": self.poll_s,
        }
