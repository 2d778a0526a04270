"""The model registry: ``<root>/<version>/`` directories, published atomically, one active.

A version directory holds ``model.xml``/``model.bin`` (the IR the line runs: INT8 when the
gates passed, else the FP32/FP16 fallback), ``reference.xml``/``.bin`` (the FP32 IR the gates
compare against), ``meta.json`` (labels, input size, metrics, precision, ...), ``report.json``
(every gate with its figure) and, on the build side, ``checkpoint.pt``.

Publishing writes everything into ``<root>/.staging-*`` and renames it into place: a crash
leaves either no version or a whole one; stale staging folders are ignored and swept.
The active version and the promotion history live in ``<root>/registry.json``, replaced
atomically (write, fsync, rename).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import Conflict, InvalidInput, ModelLoadFailed, NotFound
from .fsutil import atomic_write, fsync_dir

__all__ = ["ModelVersion", "Registry", "atomic_write_json"]

_VERSION_RE = re.compile(r"^v(\d{4,})$")


@dataclass(frozen=True)
class ModelVersion:
    version: str
    path: Path
    meta: dict[str, Any]

    @property
    def xml(self) -> Path:
        return self.path / "model.xml"

    @property
    def reference_xml(self) -> Path:
        return self.path / "reference.xml"

    @property
    def labels(self) -> list[str]:
        return list(self.meta.get("labels", []))

    @property
    def report(self) -> dict[str, Any]:
        p = self.path / "report.json"
        return json.loads(p.read_text()) if p.exists() else {}


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(float(value)) else None


def headline_source(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics dict of a version's meta that its headline figures come from: the hold-out head's
    for a head refitted on its validation samples (``metrics.holdout``: the published model has
    seen them), else the published model's when export recorded them (``metrics.published``), else
    FP32's, else the torch model's, else flat ones; None when none holds figures."""
    metrics = meta.get("metrics") or {}
    for src in (metrics.get("holdout"), metrics.get("published"), metrics.get("fp32"), metrics.get("torch"), metrics):
        if isinstance(src, dict) and ("balanced_accuracy" in src or "accuracy" in src):
            return src
    return None


def headline_metrics(meta: dict[str, Any]) -> dict[str, float | None]:
    """``{"accuracy", "balanced_accuracy"}`` of a version's meta (from :func:`headline_source`)."""
    src = headline_source(meta) or {}
    return {"accuracy": _num(src.get("accuracy")), "balanced_accuracy": _num(src.get("balanced_accuracy"))}


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2, sort_keys=True).encode("utf-8")))


class Registry:
    """Versioned model directories under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # -- reading -----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        p = self.root / "registry.json"
        if not p.exists():
            return {"active": None, "history": []}
        state: dict[str, Any] = json.loads(p.read_text(encoding="utf-8"))
        return state

    def versions(self) -> list[ModelVersion]:
        out = []
        for d in sorted(self.root.iterdir()):
            if d.is_dir() and _VERSION_RE.match(d.name) and (d / "meta.json").exists():
                out.append(self.get(d.name))
        return out

    def get(self, version: str) -> ModelVersion:
        if not _VERSION_RE.match(version or ""):
            raise InvalidInput(f"A model version looks like v0001. Got {version!r} instead.")
        d = self.root / version
        meta_path = d / "meta.json"
        if not meta_path.exists():
            raise NotFound(f"Model version {version} does not exist in this registry: `edge-al models` lists the versions.")
        return ModelVersion(version, d, json.loads(meta_path.read_text(encoding="utf-8")))

    def active_version(self) -> str | None:
        v = self._state().get("active")
        return str(v) if v else None

    def active(self) -> ModelVersion | None:
        v = self.active_version()
        return self.get(v) if v else None

    # -- publishing --------------------------------------------------------------------------
    def staging(self) -> Path:
        """A fresh private folder to build a version in; pass it to ``publish``."""
        self.sweep()
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))

    def sweep(self, older_than_s: float = 6 * 3600) -> None:
        """Remove staging folders left by crashed publishers."""
        now = time.time()
        for d in self.root.glob(".staging-*"):
            try:
                if now - d.stat().st_mtime > older_than_s:
                    shutil.rmtree(d, ignore_errors=True)
            except OSError:
                pass

    def _next_number(self) -> int:
        nums = [int(m.group(1)) for d in self.root.iterdir() if (m := _VERSION_RE.match(d.name.removeprefix(".reserved-")))]
        return max(nums, default=0) + 1

    def reserve(self) -> str:
        """Claim the next version number (so it can be written into the IR before publishing)."""
        for _ in range(100):
            version = f"v{self._next_number():04d}"
            try:
                fd = os.open(self.root / f".reserved-{version}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue
            os.close(fd)
            return version
        raise Conflict("Could not reserve a version number after 100 tries.")

    def publish(self, staging: Path, meta: dict[str, Any], version: str | None = None) -> ModelVersion:
        """Write ``meta.json`` into the staging folder, fsync it all, rename it into place.

        ``version`` is one from ``reserve()``; without it the next free number is reserved now.
        """
        if not (staging / "model.xml").exists():
            raise InvalidInput(f"{staging} has no model.xml: nothing to publish.")
        version = version or self.reserve()
        if (self.root / version).exists():
            raise Conflict(f"Model version {version} already exists.")
        atomic_write_json(staging / "meta.json", {**meta, "version": version})
        for f in staging.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(staging)
        os.rename(staging, self.root / version)
        fsync_dir(self.root)
        try:
            os.unlink(self.root / f".reserved-{version}")
        except FileNotFoundError:
            pass
        return self.get(version)

    # -- activation --------------------------------------------------------------------------
    def history(self) -> list[str]:
        """The promotion path, oldest first, ending with the active version (a rollback drops the last)."""
        return [str(v) for v in self._state().get("history", [])]

    def promote(self, version: str, load: Callable[[ModelVersion], Any] | None = None) -> ModelVersion:
        """Make ``version`` the active one. With ``load`` (e.g. compile it), it is loaded first and
        activated only if that succeeds: a version that cannot load raises ``ModelLoadFailed`` and
        leaves the active version as it was (all or nothing)."""
        mv = self.get(version)
        if load is not None:
            self._load(mv, load)
        state = self._state()
        history = [v for v in state.get("history", []) if v != version] + [version]
        atomic_write_json(self.root / "registry.json", {"active": version, "history": history, "updated_at": time.time()})
        return mv

    def rollback(self, load: Callable[[ModelVersion], Any] | None = None) -> ModelVersion:
        """Activate the version that was active before the current one (loaded first, as in ``promote``)."""
        state = self._state()
        history = list(state.get("history", []))
        if len(history) < 2:
            raise Conflict("There is no earlier active version to roll back to.")
        history.pop()
        target = self.get(history[-1])
        if load is not None:
            self._load(target, load)
        atomic_write_json(self.root / "registry.json", {"active": target.version, "history": history, "updated_at": time.time()})
        return target

    def _load(self, mv: ModelVersion, load: Callable[[ModelVersion], Any]) -> None:
        try:
            load(mv)
        except Exception as exc:
            # the runtime's message names files: say which version, never where the registry lives
            reason = f"{type(exc).__name__}: {exc}".replace(str(self.root.resolve()), "<models>").replace(str(self.root), "<models>")
            raise ModelLoadFailed(
                f"Model version {mv.version} cannot be loaded ({reason[:500]}), so it was not activated: "
                f"{self.active_version() or 'no version'} stays active. Republish it (edge-al export) or promote another."
            ) from exc
