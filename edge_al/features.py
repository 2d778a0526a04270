"""Frozen backbone features of pool samples, computed once and kept beside the backbone.

A workspace's pretrained backbone (built by the build side, ``export.backbone``) lives in
``<home>/backbones/<arch>-<size>/`` as OpenVINO IRs with a ``meta.json``. This module is the
line side of it: it reads the folder (no torch) and keeps the backbone's FP32 embedding of every
sample it was asked about in ``features.f16`` (float16 rows at row = sample id) with
``features.ok`` (one byte per sample id, written after its row), so

- ``select`` can rank a pool that has no labels and no model yet (cold start), and
- training a head on frozen features costs a lookup, not a forward pass per round.

Features are computed with the FP32 IR at ``INFERENCE_PRECISION_HINT=f32`` so they equal
torch's to about 1e-5 (the head trained on them is then applied to the same numbers in the
published IR).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import Settings
from .errors import InvalidInput
from .pool import ImageCache, read_flags
from .scoring import EmbeddingFile
from .storage import images_storage
from .store import Store

__all__ = ["BACKBONE_META", "VIEWS", "VIEW_AXES", "Backbone", "FeatureCache", "backbone_dir", "find_backbone"]

BACKBONE_META = "meta.json"


def backbone_dir(settings: Settings, arch: str, image_size: int) -> Path:
    return settings.home / "backbones" / f"{arch}-{int(image_size)}"


@dataclass(frozen=True)
class Backbone:
    """A built backbone folder: ``fp32.xml``, ``int8.xml`` and ``meta`` (see ``export.backbone``)."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> Backbone:
        path = Path(path)
        try:
            meta = json.loads((path / BACKBONE_META).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"No usable backbone in {path.name} ({exc}): build it with `edge-al embed`.") from exc
        return cls(path, meta)

    @property
    def id(self) -> str:
        return str(self.meta["id"])

    @property
    def arch(self) -> str:
        return str(self.meta["arch"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def embedding_dim(self) -> int:
        return int(self.meta["embedding_dim"])

    @property
    def fp32_xml(self) -> Path:
        return self.path / "fp32.xml"

    @property
    def int8_xml(self) -> Path:
        return self.path / "int8.xml"


def find_backbone(settings: Settings) -> Backbone | None:
    """The workspace's most recently built backbone, or None."""
    root = settings.home / "backbones"
    if not root.is_dir():
        return None
    built = [p for p in root.iterdir() if (p / BACKBONE_META).is_file()]
    if not built:
        return None
    return Backbone.open(max(built, key=lambda p: (p / BACKBONE_META).stat().st_mtime))


# Views of an image a head may be trained on (``train --augment flips``) and a published model may
# average (``--augment flips+tta``): the axes of a u8 [N, H, W, 3] batch each view reverses.
VIEW_AXES: dict[str, tuple[int, ...]] = {
    "": (),
    "h": (2,),  # mirrored left-right
    "v": (1,),  # upside down
    "hv": (1, 2),  # both: turned 180 degrees
}


def _flipper(axes: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: np.flip(a, axes) if axes else a


VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {name: _flipper(axes) for name, axes in VIEW_AXES.items()}


class FeatureCache:
    """FP32 backbone embeddings of sample ids, computed on first request and kept on disk.

    ``view`` (a key of ``VIEWS``): the embeddings of each image flipped that way, in files of their
    own (``features-h.f16``, ...); the default is the image as it is."""

    def __init__(self, settings: Settings, backbone: Backbone, *, device: str = "CPU", batch: int = 8, view: str = "") -> None:
        if view not in VIEWS:
            raise InvalidInput(f"The 'view' parameter must be one of {', '.join(repr(v) for v in VIEWS)}. Got {view!r} instead.")
        self.settings = settings
        self.backbone = backbone
        self.device = device
        self.batch = int(batch)
        self.view = view
        stem = f"features-{view}" if view else "features"
        self._file = EmbeddingFile(backbone.path / f"{stem}.f16", backbone.embedding_dim)
        self._ok_fd = os.open(backbone.path / f"{stem}.ok", os.O_RDWR | os.O_CREAT, 0o644)
        self._engine: Any = None

    def close(self) -> None:
        self._file.close()
        try:
            os.close(self._ok_fd)
        except OSError:
            pass

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def present(self, ids: np.ndarray) -> np.ndarray:
        """bool [len(ids)]: which sample ids already have features on disk."""
        return read_flags(self._ok_fd, ids)

    def get(self, store: Store, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(features float32 [n, D], ids int64 [n])`` for the ``ids`` whose image loads.

        Missing rows are computed (images from the workspace's image cache, decoded there on a
        miss) and written before their flag, so a killed run never leaves a flagged, unwritten row.
        """
        ids = np.asarray(ids, dtype=np.int64)
        missing = ids[~self.present(ids)]
        failed: set[int] = set()
        if len(missing):
            failed = self._compute(store, np.unique(missing))
        keep = np.array([int(i) not in failed for i in ids], dtype=bool)
        return self._file.read(ids[keep]), ids[keep]

    def _compute(self, store: Store, ids: np.ndarray, chunk: int = 256) -> set[int]:
        from .engine import Engine

        if self._engine is None:
            self._engine = Engine(self.backbone.fp32_xml, device=self.device, batch=self.batch, precision="f32")
        size = self.backbone.image_size
        failed: set[int] = set()
        with ImageCache(self.settings.cache_dir, (size, size), images_storage(self.settings)) as cache:
            for start in range(0, len(ids), chunk):
                samples = store.samples(ids[start : start + chunk].tolist())
                images, bad = cache.load_many(samples)
                keep = np.ones(len(samples), dtype=bool)
                keep[bad] = False
                failed |= {samples[i].id for i in bad}
                good = np.array([s.id for s in samples], dtype=np.int64)[keep]
                if len(good) == 0:
                    continue
                _, emb = self._engine.infer(np.ascontiguousarray(VIEWS[self.view](images[keep])))
                order = np.argsort(good)
                self._file.write(good[order], emb[order])
                for sid in good.tolist():
                    os.pwrite(self._ok_fd, b"\x01", int(sid))
        return failed
