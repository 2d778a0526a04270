"""Jobs over HTTP: POST /v1/jobs (retrain, score), list, one, cancel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, jsonify
from flask.wrappers import Response

from edge_al.errors import InvalidInput, MissingDependency

from . import service
from ._util import clean, json_body, query_int
from .auth import require

__all__ = ["JOB_KINDS", "bp"]

bp = Blueprint("jobs", __name__)

JOB_KINDS = ("retrain", "score")


def _manager() -> Any:
    jobs = service().jobs
    if jobs is None:
        raise MissingDependency("This service runs without a job manager: start it with the job queue enabled.")
    return jobs


@bp.post("/v1/jobs")
@require("admin")
def submit() -> tuple[Response, int]:
    body = json_body()
    if not isinstance(body, Mapping):
        raise InvalidInput('The body must be {"kind": "retrain" | "score", "params": {...}}.')
    kind = body.get("kind")
    if kind not in JOB_KINDS:
        raise InvalidInput(f"The 'kind' field must be one of {', '.join(JOB_KINDS)}. Got {kind!r} instead.")
    params = body.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise InvalidInput(f"The 'params' field must be an object. Got {params!r} instead.")
    job = _manager().submit(str(kind), dict(params))
    return jsonify(clean(job)), 202


@bp.get("/v1/jobs")
@require("admin")
def list_jobs() -> Response:
    limit = query_int("limit", 50, 1, 1000)
    return jsonify(clean({"jobs": _manager().list(limit=limit)}))


@bp.get("/v1/jobs/<job_id>")
@require("admin")
def get_job(job_id: str) -> Response:
    return jsonify(clean(_manager().get(job_id)))


@bp.post("/v1/jobs/<job_id>/cancel")
@require("admin")
def cancel_job(job_id: str) -> Response:
    return jsonify(clean(_manager().cancel(job_id)))
