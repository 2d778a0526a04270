"""Jobs over HTTP: POST /v1/jobs (retrain, score), list, one, cancel."""

from __future__ import annotations

from typing import Any

from flask import jsonify
from flask.wrappers import Response
from flask_openapi3 import APIBlueprint

from edge_al.errors import MissingDependency

from . import service
from ._util import clean, json_request
from .auth import require
from .openapi import op
from .schemas import Job, JobCreate, JobList, JobPath, JobsQuery

__all__ = ["bp"]

bp = APIBlueprint("jobs", __name__)


def _manager() -> Any:
    jobs = service().jobs
    if jobs is None:
        raise MissingDependency("This service runs without a job manager: start it with the job queue enabled.")
    return jobs


@bp.post("/v1/jobs", **op("Queue a job", "admin", {202: Job}, 409, 413, 415, 422, 503))
@require("admin")
@json_request
def submit(body: JobCreate) -> tuple[Response, int]:
    job = body.root
    job_doc = _manager().submit(job.kind, job.params.model_dump(exclude_none=True) if job.params else {})
    return jsonify(clean(job_doc)), 202


@bp.get("/v1/jobs", **op("Recent jobs, newest first", "admin", {200: JobList}, 422, 503))
@require("admin")
def list_jobs(query: JobsQuery) -> Response:
    return jsonify(clean({"jobs": _manager().list(limit=query.limit)}))


@bp.get("/v1/jobs/<int:job_id>", **op("One job", "admin", {200: Job}, 404, 422, 503))
@require("admin")
def get_job(path: JobPath) -> Response:
    return jsonify(clean(_manager().get(path.job_id)))


@bp.post("/v1/jobs/<int:job_id>/cancel", **op("Cancel a queued or running job", "admin", {200: Job}, 404, 409, 422, 503))
@require("admin")
def cancel_job(path: JobPath) -> Response:
    return jsonify(clean(_manager().cancel(path.job_id)))
