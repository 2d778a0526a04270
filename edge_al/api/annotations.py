"""POST /v1/annotations (decisions) and POST /v1/annotations/undo.

Each item is validated and committed on its own (a synchronous WAL commit: once the response
is sent, the decision survives a kill -9). Repeating a decision is a no-op (``unchanged``).
Invalid items are answered with a 422 problem listing them, while the valid items of the same
request are committed and counted. After a write the job manager may queue a retrain.

Identity: decisions are recorded under the key's annotator; an item's ``annotator`` field is
honoured only from an admin key (and ignored from any other). A decision on a sample that
another annotator holds a live lease on fails (409 ``leased-to-another``) unless the key is an
admin's; when every failed item failed that way the answer is 409, else 422; each entry of
``errors`` carries its own ``status``. Undo withdraws the sample's standing decision, which must
be the caller's own (else 403 ``not-permitted``) unless the key is an admin's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import current_app, jsonify
from flask.wrappers import Response
from flask_openapi3 import APIBlueprint
from pydantic import ValidationError

from edge_al.annotations import apply_annotations
from edge_al.errors import InvalidInput, NotFound
from edge_al.storage import images_storage

from . import service
from ._util import annotations_since_model, json_body, json_request
from .auth import current_principal, require
from .errors import Problem, short, status_for
from .openapi import json_body as documented_body
from .openapi import op
from .schemas import AnnotationItem, AnnotationsRequest, AnnotationsResult, UndoRequest, UndoResult

__all__ = ["bp"]

log = logging.getLogger(__name__)

bp = APIBlueprint("annotations", __name__)


def _items(body: Any) -> list[Any]:
    if isinstance(body, Mapping) and "annotations" in body:
        extra = sorted(str(k) for k in body if k != "annotations")
        if extra:
            raise InvalidInput(f"Unknown field(s) {', '.join(extra)} beside 'annotations': send {{\"annotations\": [...]}} only.")
        body = body["annotations"]
    elif isinstance(body, Mapping):  # one item (by sample_id or path), validated as such
        body = [body]
    if not isinstance(body, list):
        raise InvalidInput('The body must be {"annotations": [{"sample_id", "action", "label", "annotator"}, ...]} or a bare list.')
    limit = int(current_app.config["MAX_ANNOTATIONS_PER_REQUEST"])
    if len(body) > limit:
        raise InvalidInput(f"The request has {len(body)} annotations; the limit is {limit} per request.")
    return body


def _check_item(item: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(the item as the store takes it, None)`` or ``(None, why it is malformed)`` (the schema's AnnotationItem)."""
    try:
        parsed = AnnotationItem.model_validate(item)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in err["loc"]) or "the item"
        got = "" if err["type"] == "missing" else f" Got {short(err.get('input'))} instead."
        return None, {"field": loc, "detail": f"{loc}: {err['msg']}.{got}"}
    if parsed.sample_id is None and parsed.path is None:
        return None, {"field": "sample_id", "detail": "the item names neither a sample_id (1 .. 2^63-1) nor a path."}
    return parsed.model_dump(exclude_none=True), None


_ANNOTATE_OP = op("Record accept/correct/reject decisions (each committed durably)", "annotator", {200: AnnotationsResult},
                  409, 413, 415, 422, **documented_body(AnnotationsRequest))  # fmt: skip


@bp.post("/v1/annotations", **_ANNOTATE_OP)
@require("annotator")
@json_request
def annotate() -> tuple[Response, int]:
    svc = service()
    items = _items(json_body())
    errors: list[dict[str, Any]] = []
    rows: list[tuple[int, Mapping[str, Any]]] = []
    for i, item in enumerate(items):
        row, error = _check_item(item)
        if row is not None:
            rows.append((i, row))
        else:
            errors.append({"index": i, "status": 422, **(error or {})})
    who = current_principal()
    result = apply_annotations(svc.store, svc.registry, [r for _, r in rows], default_annotator=who.holder,
                               annotator=None if who.is_admin else who.holder, respect_leases=not who.is_admin,
                               storage=images_storage(svc.settings))  # fmt: skip
    for e, cause in zip(result.errors, result.causes, strict=True):
        errors.append({"index": rows[int(e["row"]) - 1][0], "status": status_for(cause)[0], "detail": str(e["reason"])})
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
        leased = all(e["status"] == 409 for e in errors)
        raise Problem(409 if leased else 422, detail, slug="leased-to-another" if leased else "invalid-annotations",
                      extra={"errors": errors, **doc})  # fmt: skip
    return jsonify(doc), 200


_UNDO_OP = op("Withdraw the annotator's latest decision on a sample", "annotator", {200: UndoResult}, 403, 409, 413, 415, 422)


@bp.post("/v1/annotations/undo", **_UNDO_OP)
@require("annotator")
@json_request
def undo(body: UndoRequest) -> Response:
    svc = service()
    sid, annotator = body.sample_id, body.annotator
    try:
        svc.store.sample(sid)
    except NotFound as exc:
        raise InvalidInput(str(exc)) from None
    who = current_principal()
    undone = svc.store.undo_annotation(sid, who.acting_as(annotator), any_annotator=who.is_admin)
    return jsonify({"undone": undone, "sample_id": sid})
