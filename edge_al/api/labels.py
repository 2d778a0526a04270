"""GET/POST /v1/labels: the project's classes (a new one is picked up by the next retrain)."""

from __future__ import annotations

from collections.abc import Mapping

from flask import Blueprint, jsonify, request
from flask.wrappers import Response

from edge_al.errors import InvalidInput

from . import service
from ._util import json_body, query_int
from .auth import require

__all__ = ["bp"]

bp = Blueprint("labels", __name__)


def _labels() -> list[str]:
    svc = service()
    labels = list(svc.store.labels())
    mv = svc.registry.active()
    if mv is not None:
        labels += [x for x in mv.labels if x not in labels]
    return labels


@bp.get("/v1/labels")
@require("annotator")
def list_labels() -> Response:
    return jsonify({"labels": _labels()})


@bp.post("/v1/labels")
@require("admin")
def add_label() -> tuple[Response, int]:
    body = json_body()
    name = body.get("name") if isinstance(body, Mapping) else None
    if not isinstance(name, str):
        raise InvalidInput(f'The body must be {{"name": "<label>"}}. Got {body!r} instead.')
    created = service().store.add_label(name)
    return jsonify({"labels": _labels(), "created": created}), 201 if created else 200


@bp.get("/v1/labels/examples")
@require("annotator")
def label_examples() -> Response:
    """Up to ``n`` samples whose standing decision is ``label`` (accepted or corrected), newest first."""
    label = (request.args.get("label") or "").strip()
    if not label:
        raise InvalidInput("The 'label' query parameter must name a class, e.g. /v1/labels/examples?label=Blowhole. Got none.")
    n = query_int("n", 6, 1, 24)
    current = service().store.current_annotations()
    picked = sorted((a for a in current.values() if a.label == label), key=lambda a: -a.created_at)[:n]
    items = [{"sample_id": a.sample_id, "image_url": f"/v1/samples/{a.sample_id}/image"} for a in picked]
    return jsonify({"label": label, "items": items})
