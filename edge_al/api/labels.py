"""GET/POST /v1/labels: the project's classes (a new one is picked up by the next retrain)."""

from __future__ import annotations

from collections.abc import Mapping

from flask import Blueprint, jsonify
from flask.wrappers import Response

from edge_al.errors import InvalidInput

from . import service
from ._util import json_body
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
