"""GET/POST /v1/labels: the project's classes (a new one is picked up by the next retrain)."""

from __future__ import annotations

from flask import jsonify
from flask.wrappers import Response
from flask_openapi3 import APIBlueprint

from edge_al.errors import InvalidInput

from . import service
from ._util import json_request
from .auth import require
from .openapi import op
from .schemas import LabelCreate, LabelExamples, LabelExamplesQuery, Labels

__all__ = ["bp"]

bp = APIBlueprint("labels", __name__)


def _labels() -> list[str]:
    svc = service()
    labels = list(svc.store.labels())
    mv = svc.registry.active()
    if mv is not None:
        labels += [x for x in mv.labels if x not in labels]
    return labels


@bp.get("/v1/labels", **op("The project's labels", "annotator", {200: Labels}))
@require("annotator")
def list_labels() -> Response:
    return jsonify({"labels": _labels()})


@bp.post("/v1/labels", **op("Add a label (picked up by the next retrain)", "admin", {201: Labels, 200: Labels}, 413, 415, 422))
@require("admin")
@json_request
def add_label(body: LabelCreate) -> tuple[Response, int]:
    created = service().store.add_label(body.name)
    return jsonify({"labels": _labels(), "created": created}), 201 if created else 200


_EXAMPLES_OP = op("Labeled examples of a class, to compare a guess against", "annotator", {200: LabelExamples}, 422)


@bp.get("/v1/labels/examples", **_EXAMPLES_OP)
@require("annotator")
def label_examples(query: LabelExamplesQuery) -> Response:
    """Up to ``n`` samples whose standing decision is ``label`` (accepted or corrected), newest first."""
    label = query.label.strip()
    if not label:
        raise InvalidInput("The 'label' query parameter must name a class, e.g. /v1/labels/examples?label=Blowhole. Got none.")
    current = service().store.current_annotations()
    picked = sorted((a for a in current.values() if a.label == label), key=lambda a: -a.created_at)[: query.n]
    items = [{"sample_id": a.sample_id, "image_url": f"/v1/samples/{a.sample_id}/image"} for a in picked]
    return jsonify({"label": label, "items": items})
