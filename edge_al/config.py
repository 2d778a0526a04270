"""Settings: frozen value object, from defaults, then environment (``EDGE_AL_*``), then arguments."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["ARCHS", "DEFAULT_ARCH", "Settings", "load_settings"]

# resnet18 is the default: on CPUs with VNNI/AMX its INT8 IR runs 2x faster than the FP32 IR at the
# runtime's default bf16 (and 16x faster than at f32), and it quantizes robustly. MobileNetV3-small
# is several times cheaper per image but gains nothing from INT8 on such CPUs (its bf16 FP32 IR is
# faster than its INT8 one, docs/benchmarks) and flips near-tie predictions under PTQ.
DEFAULT_ARCH = "resnet18"
ARCHS = ("resnet18", "resnet34", "mobilenet_v3_small", "mobilenet_v3_large")


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
    default_image_size: int = 128
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

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def _int_env(name: str, default: int) -> int:
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
        max_pixels=_int_env("EDGE_AL_MAX_PIXELS", Settings.max_pixels),
        max_file_bytes=_int_env("EDGE_AL_MAX_FILE_BYTES", Settings.max_file_bytes),
        default_image_size=_int_env("EDGE_AL_IMAGE_SIZE", Settings.default_image_size),
        retrain_after=_int_env("EDGE_AL_RETRAIN_AFTER", Settings.retrain_after),
    )
