"""Model versions: list, promote, roll back. A change swaps the served model at once
(``ModelHolder.reload``; in-flight requests finish on the old one) and queues a rescore.

All or nothing: the version is compiled (``ModelHolder.prepare``) before the registry makes it
active; one that cannot load answers 409 ``model-load-failed`` and changes neither the
registry's active version nor the served one."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import jsonify
from flask.wrappers import Response
from flask_openapi3 import APIBlueprint

from edge_al.registry import ModelVersion

from . import Service, service
from ._util import clean, model_row
from .auth import require
from .errors import Problem
from .openapi import op
from .schemas import Activated, Models, VersionPath

__all__ = ["bp"]

log = logging.getLogger(__name__)

bp = APIBlueprint("models", __name__)


@bp.get("/v1/models", **op("Model versions", "admin", {200: Models}))
@require("admin")
def list_models() -> Response:
    svc = service()
    active = svc.registry.active_version()
    return jsonify(clean({"active": active, "serving": svc.holder.version if svc.holder else None,
                          "versions": [model_row(mv, active) for mv in svc.registry.versions()]}))  # fmt: skip


def _loader(svc: Service) -> Callable[[ModelVersion], None] | None:
    if svc.holder is None:
        return None
    svc.start_model()
    return svc.holder.prepare


def _activated(svc: Service, mv: ModelVersion) -> dict[str, Any]:
    reloaded = False
    if svc.holder is not None:
        svc.start_model()
        try:
            reloaded = bool(svc.holder.reload())
        except Exception as exc:
            log.exception("could not load %s after activating it", mv.version)
            raise Problem(
                500,
                f"{mv.version} is active in the registry but could not be loaded ({type(exc).__name__}: {exc}); "
                f"the service still serves {svc.holder.version}. Promote another version or roll back.",
                slug="model-load-failed",
            ) from None
    job = None
    if svc.jobs is not None:
        job = svc.jobs.submit("score", {})
    return {"active": mv.version, "serving": svc.holder.version if svc.holder else None, "reloaded": reloaded, "rescore_job": job}


_PROMOTE_OP = op("Activate a version; the scorer swaps at once and the pool is rescored in the background", "admin",
                 {200: Activated}, 404, 409, 422, 503)  # fmt: skip


@bp.post("/v1/models/<version>/promote", **_PROMOTE_OP)
@require("admin")
def promote(path: VersionPath) -> Response:
    svc = service()
    return jsonify(clean(_activated(svc, svc.registry.promote(path.version, load=_loader(svc)))))


@bp.post("/v1/models/rollback", **op("Activate the previously active version", "admin", {200: Activated}, 409, 503))
@require("admin")
def rollback() -> Response:
    svc = service()
    return jsonify(clean(_activated(svc, svc.registry.rollback(load=_loader(svc)))))
