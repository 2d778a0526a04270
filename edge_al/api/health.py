"""/healthz (the process answers), /readyz (a model is loaded), /metrics (Prometheus)."""

from __future__ import annotations

from flask import jsonify
from flask.wrappers import Response
from flask_openapi3 import APIBlueprint

from . import service
from .auth import public
from .errors import problem_response
from .openapi import binary_response, op
from .schemas import Health, Ready

__all__ = ["bp"]

bp = APIBlueprint("health", __name__)
_TEXT = {200: binary_response("Prometheus text exposition", ("text/plain",))}


@bp.get("/healthz", **op("The process answers", None, {200: Health}))
@public
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz", **op("A model is loaded", None, {200: Ready}, 503))
@public
def readyz() -> Response:
    holder = service().holder
    if holder is None or not holder.ready:
        active = service().registry.active_version()
        why = "no model version is active: publish and promote one" if active is None else f"model {active} is not loaded yet"
        return problem_response(503, f"Not ready: {why}.", slug="not-ready", headers={"Retry-After": "2"})
    return jsonify({"status": "ready", "model_version": holder.version})


@bp.get("/metrics", **op("Prometheus metrics", None, _TEXT))
@public
def metrics() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(service().metrics.render(), mimetype=CONTENT_TYPE_LATEST.split(";")[0], content_type=CONTENT_TYPE_LATEST)
