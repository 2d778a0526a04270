"""Request parsing shared by the blueprints: uploaded images, query values, JSON bodies.

JSON bodies are parsed by :class:`SafeJSONProvider` (the app's ``app.json``), which answers a
precise 422 problem instead of a 500 for what ``json.loads`` lets through or chokes on: nesting
deeper than ``MAX_JSON_DEPTH``, integer literals over Python's 4,300-digit limit, and strings
holding unpaired UTF-16 surrogates (``"\\ud800"``), which no UTF-8 store can keep.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from flask import current_app, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from edge_al.errors import EdgeALError, ImageTooLarge, InvalidInput
from edge_al.images import ImageInfo, probe
from edge_al.lifecycle import annotations_since_model as lifecycle_annotations_since_model
from edge_al.registry import ModelVersion, Registry, headline_metrics
from edge_al.store import Store

from .errors import Problem, status_for

__all__ = [
    "MAX_JSON_DEPTH",
    "SafeJSONProvider",
    "Upload",
    "annotations_since_model",
    "clean",
    "headline_metrics",
    "json_body",
    "json_request",
    "model_row",
    "multipart_parts",
    "parse_json",
    "read_uploads",
    "require_json_content",
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
        parts = multipart_parts()
        if len(parts) > limit:
            raise Problem(413, f"The request has {len(parts)} images; the limit is {limit} per request.", slug="too-many-images")
        if not parts:
            raise InvalidInput("The multipart body has no parts: send each image as a part (e.g. curl -F image=@a.jpg).")
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


MAX_BOUNDARY = 200


def multipart_parts() -> list[tuple[str, bytes]]:
    """``(filename or field name, bytes)`` of every part of a multipart body, file or not: an image sent
    as a plain field (no filename) is still an image. A malformed or truncated body: 400."""
    boundary = request.mimetype_params.get("boundary", "")
    # RFC 2046 says at most 70 characters, but common clients exceed it (Werkzeug's own test client
    # makes 66-75 from time() and random()): accept up to MAX_BOUNDARY, still bounded.
    if not boundary or len(boundary) > MAX_BOUNDARY:
        raise Problem(
            400, f"The multipart body needs a boundary of 1-{MAX_BOUNDARY} characters in its Content-Type.", slug="malformed-multipart"
        )
    decoder = MultipartDecoder(boundary.encode("latin-1", "replace"))
    decoder.receive_data(request.get_data(cache=False))
    decoder.receive_data(None)
    parts: list[tuple[str, bytearray]] = []
    while True:
        try:
            event = decoder.next_event()
        except ValueError:
            raise Problem(400, "The multipart body is malformed or cut short: send complete parts, each ending with the "
                          "boundary, and a closing boundary.", slug="malformed-multipart") from None  # fmt: skip
        if isinstance(event, (Field, File)):
            parts.append((getattr(event, "filename", None) or event.name, bytearray()))
        elif isinstance(event, Data) and parts:
            parts[-1][1].extend(event.data)
        elif isinstance(event, (Epilogue, NeedData)):
            return [(name, bytes(data)) for name, data in parts]


MAX_JSON_DEPTH = 32


def parse_json(raw: str | bytes) -> Any:
    """``raw`` parsed, or ``InvalidInput`` (422) saying what is wrong with it (never a 500)."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"The body is not UTF-8 (byte {exc.start}): send JSON encoded as UTF-8.") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise InvalidInput(f"The JSON body is nested too deeply: at most {MAX_JSON_DEPTH} levels are accepted.") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"The body is not valid JSON: {exc}. Send a JSON document with Content-Type: application/json.") from None
    except ValueError:  # an integer literal over Python's 4,300-digit limit
        raise InvalidInput("The JSON body holds an integer literal of more than 4,300 digits: ids and counts fit in 19 digits.") from None
    _check_tree(value)
    return value


def _check_tree(value: Any) -> None:
    """Depth and string checks over a parsed document, iteratively (no recursion limit to hit)."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "$")]
    while stack:
        node, depth, where = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidInput(f"The JSON body is nested {depth}+ levels deep at {where}: at most {MAX_JSON_DEPTH} levels are accepted.")
        if isinstance(node, str):
            _check_text(node, where)
        elif isinstance(node, dict):
            for k, v in node.items():
                _check_text(k, where)
                stack.append((v, depth + 1, f"{where}.{k}" if len(where) < 200 else where))
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{where}[{i}]" if len(where) < 200 else where) for i, v in enumerate(node))


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"The string at {where} holds an unpaired UTF-16 surrogate (character {exc.start}): send valid Unicode text."
        ) from None


class SafeJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with :func:`parse_json` for request bodies."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return parse_json(s)


def json_request(view: Any) -> Any:
    """Mark a view as taking a JSON body: other content types get 415 before the view runs."""
    view.json_body = True
    return view


def require_json_content() -> None:
    """The ``before_request`` check for views marked with :func:`json_request` (after authentication)."""
    view = current_app.view_functions.get(request.endpoint or "")
    if getattr(view, "json_body", False) and not request.is_json:
        raise Problem(415, f"Send a JSON body with Content-Type: application/json. Got {request.mimetype or 'no content type'}.",
                      slug="unsupported-media-type")  # fmt: skip


def json_body() -> Any:
    """The parsed JSON body: 415 when it is not JSON, 422 when it does not parse."""
    if not request.is_json:
        raise Problem(415, f"Send a JSON body with Content-Type: application/json. Got {request.mimetype or 'no content type'}.",
                      slug="unsupported-media-type")  # fmt: skip
    raw = request.get_data(cache=True)
    return parse_json(raw) if raw else None


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
