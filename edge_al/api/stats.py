"""GET /v1/stats: the pool, labels per class, and the learning curve of this deployment."""

from __future__ import annotations

import logging

from flask import jsonify
from flask.wrappers import Response
from flask_openapi3 import APIBlueprint

from edge_al.status import status_doc, validation_of

from . import service
from ._util import annotations_since_model, clean, model_row
from .auth import require
from .openapi import op
from .schemas import Stats

__all__ = ["bp"]

log = logging.getLogger(__name__)

bp = APIBlueprint("stats", __name__)


@bp.get("/v1/stats", **op("Pool, labels per class, the learning curve", "annotator", {200: Stats}))
@require("annotator")
def stats() -> Response:
    svc = service()
    doc = status_doc(svc.store, svc.registry)
    active = svc.registry.active_version()
    versions = svc.registry.versions()
    rows = [model_row(mv, active) for mv in versions]
    promoted = set(svc.registry.history())
    validation = {mv.version: validation_of(mv.meta) for mv in versions}
    job = None
    if svc.jobs is not None:
        try:
            job = svc.jobs.active_retrain()
        except Exception:  # stats stay readable when the queue is not
            log.exception("could not read the retrain job")
    doc.update(
        {
            "annotations_since_model": annotations_since_model(svc.store, svc.registry),
            "retrain_after": svc.retrain_after,
            "serving": svc.holder.version if svc.holder else None,
            "retrain_job": job,
            "models": [
                {
                    "version": r["version"],
                    "active": r["active"],
                    "num_train_labels": r["num_train_labels"],
                    "precision": r["precision"],
                    "metrics": r["headline"],
                    "created_at": r["created_at"],
                    "promoted": r["version"] in promoted,
                    "validation": validation[r["version"]],
                }
                for r in rows
            ],
        }
    )
    return jsonify(clean(doc))
