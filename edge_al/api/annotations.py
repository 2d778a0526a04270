"""POST /v1/annotations (decisions) and POST /v1/annotations/undo.

Each item is validated and committed on its own (a synchronous WAL commit: once the response
is sent, the decision survives a kill -9). Repeating a decision is a no-op (``unchanged``).
Invalid items are answered with a 422 problem listing them, while the valid items of the same
request are committed and counted. After a write the job manager may queue a retrain.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.wrappers import Response

from edge_al.annotations import apply_annotations
from edge_al.errors import InvalidInput, NotFound

from . import service
from ._util import annotations_since_model, json_body
from .auth import current_principal, require
from .errors import Problem

__all__ = ["bp"]

log = logging.getLogger(__name__)

bp = Blueprint("annotations", __name__)

_FIELDS = {"sample_id", "path", "action", "label", "annotator"}


def _items(body: Any) -> list[Any]:
    if isinstance(body, Mapping) and "annotations" in body:
        body = body["annotations"]
    elif isinstance(body, Mapping) and "sample_id" in body:
        body = [body]
    if not isinstance(body, list):
        raise InvalidInput('The body must be {"annotations": [{"sample_id", "action", "label", "annotator"}, ...]} or a bare list.')
    limit = int(current_app.config["MAX_ANNOTATIONS_PER_REQUEST"])
    if len(body) > limit:
        raise InvalidInput(f"The request has {len(body)} annotations; the limit is {limit} per request.")
    return body


def _check_item(item: Any) -> str | None:
    """A reason the item is malformed before it reaches the store, or None."""
    if not isinstance(item, Mapping):
        return "the item is not an object with sample_id, action, label, annotator."
    sid = item.get("sample_id")
    if sid is None and item.get("path") is None:
        return "the item names no sample_id."
    if sid is not None and (isinstance(sid, bool) or not (isinstance(sid, int) or (isinstance(sid, str) and sid.strip().isdigit()))):
        return f"sample_id must be an integer. Got {sid!r} instead."
    for key in ("action", "label", "annotator", "path"):
        value = item.get(key)
        if value is not None and not isinstance(value, str):
            return f"{key} must be a string. Got {value!r} instead."
    unknown = sorted(set(item) - _FIELDS)
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(_FIELDS))}."
    return None


@bp.post("/v1/annotations")
@require("annotator")
def annotate() -> tuple[Response, int]:
    svc = service()
    items = _items(json_body())
    errors: list[dict[str, Any]] = []
    rows: list[tuple[int, Mapping[str, Any]]] = []
    for i, item in enumerate(items):
        reason = _check_item(item)
        if reason is None:
            rows.append((i, item))
        else:
            errors.append({"index": i, "detail": reason})
    result = apply_annotations(svc.store, svc.registry, [r for _, r in rows], default_annotator=current_principal().holder)
    for e in result.errors:
        errors.append({"index": rows[int(e["row"]) - 1][0], "detail": str(e["reason"])})
    errors.sort(key=lambda e: int(e["index"]))
    job = None
    if svc.jobs is not None:
        try:
            if result.written:
                job = svc.jobs.maybe_queue_retrain(svc.retrain_after)
            job = job or svc.jobs.active_retrain()
        except Exception:  # the decisions are committed; a queue hiccup must not hide that
            log.exception("could not check or queue a retrain job")
    doc: dict[str, Any] = {
        "written": result.written,
        "unchanged": result.unchanged,
        "annotations_since_model": annotations_since_model(svc.store, svc.registry),
        "retrain_after": svc.retrain_after,
        "retrain_job": job,
    }
    if errors:
        n = len(errors)
        detail = f"{n} of {len(items)} annotation(s) are invalid (the other {len(items) - n} were processed): "
        detail += f"item {errors[0]['index']}: {errors[0]['detail']}"
        raise Problem(422, detail, slug="invalid-annotations", extra={"errors": errors, **doc})
    return jsonify(doc), 200


@bp.post("/v1/annotations/undo")
@require("annotator")
def undo() -> Response:
    svc = service()
    body = json_body()
    if not isinstance(body, Mapping):
        raise InvalidInput('The body must be {"sample_id": <int>, "annotator": "<name>"}.')
    sid = body.get("sample_id")
    if isinstance(sid, bool) or not isinstance(sid, int):
        raise InvalidInput(f"The 'sample_id' field must be an integer. Got {sid!r} instead.")
    annotator = body.get("annotator")
    if annotator is not None and not isinstance(annotator, str):
        raise InvalidInput(f"The 'annotator' field must be a string. Got {annotator!r} instead.")
    try:
        svc.store.sample(sid)
    except NotFound as exc:
        raise InvalidInput(str(exc)) from None
    undone = svc.store.undo_annotation(sid, annotator or current_principal().holder)
    return jsonify({"undone": undone, "sample_id": sid})
