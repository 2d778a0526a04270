"""Request parsing shared by the blueprints: uploaded images, query integers, JSON bodies."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from flask import current_app, request

from edge_al.errors import EdgeALError, ImageTooLarge, InvalidInput
from edge_al.images import ImageInfo, probe
from edge_al.lifecycle import annotations_since_model as lifecycle_annotations_since_model
from edge_al.registry import ModelVersion, Registry, headline_metrics
from edge_al.store import Store

from .errors import Problem, status_for

__all__ = [
    "Upload",
    "annotations_since_model",
    "clean",
    "headline_metrics",
    "json_body",
    "model_row",
    "query_bool",
    "query_int",
    "read_uploads",
]


@dataclass(frozen=True)
class Upload:
    """One uploaded image, probed (header + decode check) but not decoded to pixels."""

    filename: str
    data: bytes
    info: ImageInfo


def read_uploads(max_pixels: int, max_bytes: int) -> list[Upload]:
    """The images of a raw ``image/*`` body or of every file part of a multipart body.

    Each image is probed before anything decodes it: over the byte or pixel limit -> 413,
    undecodable -> 400. With several bad images the problem lists each (``errors``).
    """
    ctype = (request.mimetype or "").lower()
    limit = int(current_app.config["MAX_IMAGES_PER_REQUEST"])
    parts: list[tuple[str, bytes]] = []
    if ctype.startswith("image/"):
        parts.append((request.args.get("filename", "") or "", request.get_data(cache=False)))
    elif ctype == "multipart/form-data":
        files = [f for key in request.files for f in request.files.getlist(key)]
        if len(files) > limit:
            raise Problem(413, f"The request has {len(files)} images; the limit is {limit} per request.", slug="too-many-images")
        parts = [(f.filename or f.name or "", f.read()) for f in files]
        if not parts:
            raise InvalidInput("The multipart body has no file parts: send each image as a file part (e.g. curl -F image=@a.jpg).")
    else:
        raise Problem(
            415,
            f"Send an image as a raw body with an image/* content type, or several as multipart/form-data. Got {ctype or 'no content type'}.",
            slug="unsupported-media-type",
        )
    out: list[Upload] = []
    errors: list[dict[str, Any]] = []
    worst = 400
    for i, (name, data) in enumerate(parts):
        try:
            # fast_jpeg: the dispatcher decodes it next with OpenCV, which rejects what the
            # header and end marker checks let through; a full PIL decode here doubled the work
            out.append(Upload(name, data, probe(data, max_pixels=max_pixels, max_bytes=max_bytes, fast_jpeg=True)))
        except EdgeALError as exc:
            status, _ = status_for(exc)
            worst = max(worst, status if isinstance(exc, ImageTooLarge) else 400)
            errors.append({"index": i, "filename": name, "detail": str(exc)})
    if errors:
        first = errors[0]
        where = f"image {first['index']}" + (f" ({first['filename']})" if first["filename"] else "")
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        slug = "image-too-large" if worst == 413 else "undecodable-image"
        raise Problem(worst, f"{where}: {first['detail']}{more}", slug=slug, errors=errors)
    return out


def query_int(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"The '{name}' parameter must be an int in [{lo}, {hi}]. Got {raw!r} instead.") from None
    if not lo <= value <= hi:
        raise InvalidInput(f"The '{name}' parameter must be an int in [{lo}, {hi}]. Got {value} instead.")
    return value


def query_bool(name: str, default: bool = False) -> bool:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    text = raw.strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise InvalidInput(f"The '{name}' parameter must be true or false. Got {raw!r} instead.")


def json_body() -> Any:
    """The parsed JSON body: 415 when it is not JSON, 422 when it does not parse."""
    if not request.is_json:
        raise Problem(415, f"Send a JSON body with Content-Type: application/json. Got {request.mimetype or 'no content type'}.",
                      slug="unsupported-media-type")  # fmt: skip
    raw = request.get_data(cache=True)
    try:
        return json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"The body is not valid JSON: {exc}") from None


def clean(value: Any) -> Any:
    """``value`` with NaN/inf floats (JSON has none) replaced by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def model_row(mv: ModelVersion, active: str | None) -> dict[str, Any]:
    meta = mv.meta
    created = meta.get("created_at")
    try:
        created_at: float | None = float(created) if created is not None else None
    except (TypeError, ValueError):
        created_at = None
    if created_at is None:
        try:
            created_at = (mv.path / "meta.json").stat().st_mtime
        except OSError:
            created_at = None
    n = meta.get("num_train_labels")
    return {
        "version": mv.version,
        "active": mv.version == active,
        "precision": meta.get("precision"),
        "arch": meta.get("arch"),
        "labels": list(meta.get("labels", [])),
        "metrics": meta.get("metrics", {}) or {},
        "headline": headline_metrics(meta),
        "num_train_labels": int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else None,
        "fallback": bool(meta.get("fallback", False)),
        "created_at": created_at,
    }


def annotations_since_model(store: Store, registry: Registry) -> int:
    """Decisions since the active model (``lifecycle.annotations_since_model``): the same figure
    whether or not the job system runs."""
    return lifecycle_annotations_since_model(store, registry)
