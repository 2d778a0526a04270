"""Model versions: list, promote, roll back. A change swaps the served model at once
(``ModelHolder.reload``; in-flight requests finish on the old one) and queues a rescore.

All or nothing: the version is compiled (``ModelHolder.prepare``) before the registry makes it
active; one that cannot load answers 409 ``model-load-failed`` and changes neither the
registry's active version nor the served one."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, jsonify
from flask.wrappers import Response

from edge_al.registry import ModelVersion

from . import Service, service
from ._util import clean, model_row
from .auth import require
from .errors import Problem

__all__ = ["bp"]

log = logging.getLogger(__name__)

bp = Blueprint("models", __name__)


@bp.get("/v1/models")
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


@bp.post("/v1/models/<version>/promote")
@require("admin")
def promote(version: str) -> Response:
    svc = service()
    return jsonify(clean(_activated(svc, svc.registry.promote(version, load=_loader(svc)))))


@bp.post("/v1/models/rollback")
@require("admin")
def rollback() -> Response:
    svc = service()
    return jsonify(clean(_activated(svc, svc.registry.rollback(load=_loader(svc)))))
