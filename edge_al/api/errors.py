"""The one place that turns errors into HTTP: RFC 9457 ``application/problem+json`` bodies.

=============================  ======  ==============================================
raised                         status  when
=============================  ======  ==============================================
``ImageTooLarge``              413     an image over the byte or pixel limit (bombs)
``ImageError``                 400     empty, truncated, corrupt or non-image upload
``UnknownLabel``               422     a label the project does not have
``InvalidInput``               422     a field or parameter of the wrong form
``NotFound``                   404     unknown sample, model version or job
``NotPermitted``               403     an annotator acting on another's decision
``LeaseConflict``              409     a sample leased to another annotator
``ModelLoadFailed``            409     a version that cannot load is not activated
``Conflict`` / ``GateFailed``  409     the state does not allow it
``NoActiveModel``              503     nothing to score with yet (``Retry-After``)
``MissingDependency``          503     an optional extra is not installed here
``BrokerUnavailable``          503     the job broker (Redis) is unreachable (``Retry-After``)
``StoreUnavailable``           503     the PostgreSQL store cannot be reached
``Problem``                    any     raised by the HTTP layer itself (401, 403, 415, ...)
pydantic ``ValidationError``   422     a path, query or body field against its schema
werkzeug ``HTTPException``     its     404/405 routing, 413 over ``MAX_CONTENT_LENGTH``
anything else                  500     logged with its traceback; the body says only "internal"
=============================  ======  ==============================================

Every body is ``{"type", "title", "status", "detail", "instance"}`` plus extension members
(``errors`` for per-item problems). No traceback ever reaches a client.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from edge_al.errors import (
    BrokerUnavailable,
    Conflict,
    EdgeALError,
    GateFailed,
    ImageError,
    ImageTooLarge,
    InvalidInput,
    LeaseConflict,
    MissingDependency,
    ModelLoadFailed,
    NoActiveModel,
    NotFound,
    NotPermitted,
    StoreUnavailable,
    UnknownLabel,
)

__all__ = ["PROBLEM_MIME", "Problem", "problem_response", "register_error_handlers", "short", "status_for", "validation_problem"]

log = logging.getLogger(__name__)

PROBLEM_MIME = "application/problem+json"
TYPE_BASE = "urn:edge-al:problem:"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}

# Most specific first: the first matching class decides.
_DOMAIN: list[tuple[type[EdgeALError], int, str]] = [
    (ImageTooLarge, 413, "image-too-large"),
    (ImageError, 400, "undecodable-image"),
    (UnknownLabel, 422, "unknown-label"),
    (InvalidInput, 422, "invalid-input"),
    (NotFound, 404, "not-found"),
    (NotPermitted, 403, "not-permitted"),
    (LeaseConflict, 409, "leased-to-another"),
    (ModelLoadFailed, 409, "model-load-failed"),
    (Conflict, 409, "conflict"),
    (GateFailed, 409, "gate-failed"),
    (NoActiveModel, 503, "no-active-model"),
    (MissingDependency, 503, "missing-dependency"),
    (BrokerUnavailable, 503, "broker-unavailable"),
    (StoreUnavailable, 503, "store-unavailable"),
]


class Problem(Exception):
    """An HTTP problem raised by the API layer itself (auth, content type, limits)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        **members: Any,
    ) -> None:
        super().__init__(detail)
        self.status = int(status)
        self.detail = detail
        self.slug = slug or _TITLES.get(self.status, "error").lower().replace(" ", "-")
        self.title = title or _TITLES.get(self.status, "Error")
        self.headers = headers or {}
        self.extra = {**(extra or {}), **members}


def status_for(exc: EdgeALError) -> tuple[int, str]:
    """``(HTTP status, problem slug)`` of a domain error."""
    for cls, status, slug in _DOMAIN:
        if isinstance(exc, cls):
            return status, slug
    return 400, "bad-request"


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": TYPE_BASE + (slug or _TITLES.get(status, "error").lower().replace(" ", "-")),
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": request.path if request else "",
    }
    body.update(extra)
    resp = Response(json.dumps(body, default=str), status=status, mimetype=PROBLEM_MIME)
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a 5,000-digit integer has no repr on Python 3.11+)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"an integer of about {int(abs(value).bit_length() * 0.30103) + 1} digits"
    return text if len(text) <= limit else text[: limit - 3] + "..."


_PARTS = {"Path": "path parameter", "Query": "query parameter"}


def validation_problem(exc: ValidationError) -> Response:
    """A 422 problem naming each field that failed its schema (flask-openapi3's validation callback)."""
    part = next((v for k, v in _PARTS.items() if exc.title.endswith(k)), "body field")
    prefix = {"path parameter": "path", "query parameter": "query"}.get(part, "body")
    items = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in err["loc"]) or "(the body)"
        got = "" if err["type"] == "missing" else f" Got {short(err.get('input'))} instead."
        items.append({"field": f"{prefix}.{loc}", "detail": f"The {loc!r} {part}: {err['msg']}.{got}"})
    more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
    return problem_response(422, items[0]["detail"] + more, slug="invalid-input", errors=items)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(Problem)
    def _problem(exc: Problem) -> Response:
        return problem_response(exc.status, exc.detail, slug=exc.slug, title=exc.title, headers=exc.headers, **exc.extra)

    @app.errorhandler(EdgeALError)
    def _domain(exc: EdgeALError) -> Response:
        status, slug = status_for(exc)
        headers = {"Retry-After": "5"} if status == 503 else None
        return problem_response(status, str(exc) or type(exc).__name__, slug=slug, headers=headers)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        detail = exc.description or _TITLES.get(status, "Error")
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            detail = f"The request body is over the limit of {limit:,} bytes." if limit else detail
        elif status == 404:
            detail = f"There is no resource at {request.path}."
        elif status == 429:
            detail = f"This API key is over its request budget ({exc.description}): retry after Retry-After seconds."
        elif status == 405:
            allowed = exc.valid_methods if hasattr(exc, "valid_methods") else None
            detail = f"{request.method} is not allowed on {request.path}" + (f"; allowed: {', '.join(allowed)}." if allowed else ".")
        headers = {k: v for k, v in exc.get_headers() if k.lower() not in {"content-type", "content-length"}}
        return problem_response(status, detail, headers=headers)

    @app.errorhandler(Exception)
    def _internal(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(500, "The service hit an internal error; it is logged on the server. The request was not completed.")
