"""The OpenAPI 3.1 document of the service, served at /v1/openapi.json (no key needed).

Hand-written: one entry per route, request and response schemas in ``components``. The test
suite validates every response body it gets against this document, so it stays true.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.wrappers import Response

from edge_al import __version__, acquisition

from .auth import public

__all__ = ["bp", "document"]

bp = Blueprint("openapi", __name__)

_NUM_OR_NULL = {"type": ["number", "null"]}
_TIME = {"type": "number", "description": "Unix time, seconds"}
_TIME_OR_NULL = {"type": ["number", "null"], "description": "Unix time, seconds"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": _ref("Problem")}}}


_AUTH_ERRORS = {"401": _problem("missing or invalid API key"), "403": _problem("the key lacks the role")}

_SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "detail"],
                    "properties": {"index": {"type": "integer"}, "filename": {"type": "string"}, "detail": {"type": "string"}},
                },
            },
        },
    },
    "Scores": {
        "type": "object",
        "description": "acquisition scores: higher = more informative; fre/knn need a labeled reference (else null)",
        "required": ["entropy", "margin", "least_confidence"],
        "properties": {k: _NUM_OR_NULL for k in ("entropy", "margin", "least_confidence", "fre", "knn")},
    },
    "ScoreResult": {
        "type": "object",
        "required": ["filename", "label", "confidence", "top_k", "scores", "model_version"],
        "properties": {
            "filename": {"type": "string"},
            "label": {"type": "string"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "top_k": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["label", "probability"],
                    "properties": {"label": {"type": "string"}, "probability": {"type": "number"}},
                },
            },
            "scores": _ref("Scores"),
            "model_version": {"type": "string", "description": "the version that produced this result"},
            "sample_id": {"type": "integer", "description": "with ?store=true: the pool sample (deduplicated)"},
            "created": {"type": "boolean", "description": "with ?store=true: false when the image was already in the pool"},
        },
    },
    "ScoreResponse": {
        "type": "object",
        "required": ["model_version", "results"],
        "properties": {"model_version": {"type": ["string", "null"]}, "results": {"type": "array", "items": _ref("ScoreResult")}},
    },
    "SamplesCreated": {
        "type": "object",
        "required": ["samples"],
        "properties": {
            "samples": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "sha256", "created"],
                    "properties": {
                        "id": {"type": "integer"},
                        "sha256": {"type": "string"},
                        "created": {"type": "boolean", "description": "false: a duplicate of an existing sample"},
                        "filename": {"type": "string"},
                    },
                },
            }
        },
    },
    "Decision": {
        "type": "object",
        "required": ["action", "label", "annotator", "created_at"],
        "properties": {
            "action": {"enum": ["accept", "correct", "reject", "undo"]},
            "label": {"type": ["string", "null"]},
            "annotator": {"type": "string"},
            "created_at": _TIME,
        },
    },
    "Sample": {
        "type": "object",
        "required": ["id", "sha256", "width", "height", "source", "created_at", "annotation", "prediction"],
        "properties": {
            "id": {"type": "integer"},
            "sha256": {"type": "string"},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "source": {"type": "string"},
            "created_at": _TIME,
            "image_url": {"type": "string"},
            "annotation": {"anyOf": [_ref("Decision"), {"type": "null"}], "description": "the standing decision"},
            "history": {"type": "array", "items": _ref("Decision")},
            "prediction": {
                "anyOf": [
                    {
                        "type": "object",
                        "required": ["model_version", "label", "confidence", "probs"],
                        "properties": {
                            "model_version": {"type": "string"},
                            "label": {"type": "string"},
                            "confidence": {"type": "number"},
                            "probs": {"type": "object", "additionalProperties": {"type": "number"}},
                            "scores": {"type": "object", "additionalProperties": {"type": "number"}},
                        },
                    },
                    {"type": "null"},
                ]
            },
        },
    },
    "QueueItem": {
        "type": "object",
        "required": ["sample_id", "image_url", "predicted", "confidence", "probs", "scores", "lease_expires_at"],
        "properties": {
            "sample_id": {"type": "integer"},
            "image_url": {"type": "string"},
            "predicted": {"type": "string"},
            "confidence": {"type": "number"},
            "probs": {"type": "object", "additionalProperties": {"type": "number"}},
            "score": _NUM_OR_NULL,
            "scores": {"type": "object", "additionalProperties": _NUM_OR_NULL},
            "reason": _ref("PickReason"),
            "lease_expires_at": _TIME,
        },
    },
    "PickReason": {
        "type": "object",
        "description": "why the sample was picked, for people (edge_al.selection.pick_reason)",
        "required": ["code", "codes", "text"],
        "properties": {
            "code": {"type": "string", "description": "the most telling of codes"},
            "codes": {
                "type": "array",
                "items": {"type": "string"},
                "description": "uncertain | rare predicted class | unlike anything labeled | cold-start typical | random | ranked by <strategy>",
            },
            "text": {"type": "string"},
        },
    },
    "Validation": {
        "type": "object",
        "description": "how far a version's validation figures can be trusted (edge_al.figures)",
        "required": ["n", "trusted", "note"],
        "properties": {"n": {"type": ["integer", "null"]}, "trusted": {"type": "boolean"}, "note": {"type": ["string", "null"]}},
    },
    "LabelExamples": {
        "type": "object",
        "required": ["label", "items"],
        "properties": {
            "label": {"type": "string"},
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["sample_id", "image_url"],
                    "properties": {"sample_id": {"type": "integer"}, "image_url": {"type": "string"}},
                },
            },
        },
    },
    "Queue": {
        "type": "object",
        "required": ["model_version", "strategy", "lease_seconds", "labels", "items"],
        "properties": {
            "model_version": {
                "type": ["string", "null"],
                "description": "null before the first model: a cold start over the embedded pool (edge-al embed), predicted ''",
            },
            "strategy": {"enum": list(acquisition.STRATEGIES)},
            "holder": {"type": "string", "description": "who holds the leases (annotator, else the key's name)"},
            "lease_seconds": {"type": "integer"},
            "labels": {"type": "array", "items": {"type": "string"}},
            "items": {"type": "array", "items": _ref("QueueItem")},
        },
    },
    "AnnotationItem": {
        "type": "object",
        "required": ["sample_id", "action"],
        "properties": {
            "sample_id": {"type": "integer"},
            "action": {"enum": ["accept", "correct", "reject"]},
            "label": {"type": ["string", "null"], "description": "needed for correct; accept defaults to the model's guess"},
            "annotator": {"type": "string", "description": "default: the key's name"},
        },
        "additionalProperties": False,
    },
    "AnnotationsRequest": {
        "oneOf": [
            {
                "type": "object",
                "required": ["annotations"],
                "properties": {"annotations": {"type": "array", "items": _ref("AnnotationItem")}},
            },
            {"type": "array", "items": _ref("AnnotationItem")},
        ]
    },
    "AnnotationsResult": {
        "type": "object",
        "required": ["written", "unchanged", "annotations_since_model", "retrain_after", "retrain_job"],
        "properties": {
            "written": {"type": "integer"},
            "unchanged": {"type": "integer", "description": "repeats of the annotator's standing decision"},
            "annotations_since_model": {"type": "integer"},
            "retrain_after": {"type": "integer"},
            "retrain_job": {"anyOf": [_ref("Job"), {"type": "null"}]},
        },
    },
    "UndoRequest": {
        "type": "object",
        "required": ["sample_id"],
        "properties": {"sample_id": {"type": "integer"}, "annotator": {"type": "string"}},
    },
    "UndoResult": {
        "type": "object",
        "required": ["undone"],
        "properties": {"undone": {"type": "boolean"}, "sample_id": {"type": "integer"}},
    },
    "Labels": {
        "type": "object",
        "required": ["labels"],
        "properties": {"labels": {"type": "array", "items": {"type": "string"}}, "created": {"type": "boolean"}},
    },
    "LabelCreate": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 128}}},
    "JobCreate": {
        "type": "object",
        "required": ["kind"],
        "properties": {"kind": {"enum": ["retrain", "score"]}, "params": {"type": "object"}},
    },
    "Job": {
        "type": "object",
        "required": ["id", "kind", "state"],
        "properties": {
            "id": {"type": ["string", "integer"]},
            "kind": {"type": "string"},
            "state": {"enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
            "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "message": {"type": ["string", "null"]},
            "log_tail": {"type": "array", "items": {"type": "string"}},
            "created_at": _TIME_OR_NULL,
            "started_at": _TIME_OR_NULL,
            "finished_at": _TIME_OR_NULL,
            "result": {},
        },
    },
    "JobList": {"type": "object", "required": ["jobs"], "properties": {"jobs": {"type": "array", "items": _ref("Job")}}},
    "ModelVersion": {
        "type": "object",
        "required": ["version", "active", "precision", "metrics", "num_train_labels", "created_at"],
        "properties": {
            "version": {"type": "string"},
            "active": {"type": "boolean"},
            "precision": {"type": ["string", "null"]},
            "arch": {"type": ["string", "null"]},
            "labels": {"type": "array", "items": {"type": "string"}},
            "metrics": {"type": "object", "description": "as export recorded them"},
            "headline": _ref("Headline"),
            "num_train_labels": {"type": ["integer", "null"]},
            "fallback": {"type": "boolean"},
            "created_at": _TIME_OR_NULL,
        },
    },
    "Headline": {
        "type": "object",
        "required": ["accuracy", "balanced_accuracy"],
        "properties": {"accuracy": _NUM_OR_NULL, "balanced_accuracy": _NUM_OR_NULL},
    },
    "Models": {
        "type": "object",
        "required": ["active", "versions"],
        "properties": {
            "active": {"type": ["string", "null"]},
            "serving": {"type": ["string", "null"], "description": "the version the scorer has loaded"},
            "versions": {"type": "array", "items": _ref("ModelVersion")},
        },
    },
    "Activated": {
        "type": "object",
        "required": ["active"],
        "properties": {
            "active": {"type": "string"},
            "serving": {"type": ["string", "null"]},
            "reloaded": {"type": "boolean"},
            "rescore_job": {"anyOf": [_ref("Job"), {"type": "null"}]},
        },
    },
    "Stats": {
        "type": "object",
        "required": [
            "pool_size",
            "labeled",
            "unlabeled",
            "rejected",
            "labeled_per_class",
            "annotations_since_model",
            "retrain_after",
            "active_model",
            "retrain_job",
            "models",
        ],
        "properties": {
            "pool_size": {"type": "integer"},
            "labeled": {"type": "integer"},
            "unlabeled": {"type": "integer"},
            "rejected": {"type": "integer"},
            "labels": {"type": "array", "items": {"type": "string"}},
            "labeled_per_class": {"type": "object", "additionalProperties": {"type": "integer"}},
            "unlabeled_predicted_per_class": {"type": "object", "additionalProperties": {"type": "integer"}},
            "annotations_since_model": {"type": "integer"},
            "retrain_after": {"type": "integer"},
            "serving": {"type": ["string", "null"]},
            "scored_by_active": {"type": "integer"},
            "active_model": {"anyOf": [{"type": "object", "required": ["version"]}, {"type": "null"}]},
            "retrain_job": {"anyOf": [_ref("Job"), {"type": "null"}]},
            "models": {
                "type": "array",
                "description": "the learning curve: each version, its metrics and the labels it was trained on",
                "items": {
                    "type": "object",
                    "required": ["version", "active", "num_train_labels", "metrics", "created_at"],
                    "properties": {
                        "version": {"type": "string"},
                        "active": {"type": "boolean"},
                        "num_train_labels": {"type": ["integer", "null"]},
                        "precision": {"type": ["string", "null"]},
                        "metrics": _ref("Headline"),
                        "created_at": _TIME_OR_NULL,
                        "promoted": {"type": "boolean", "description": "on the promotion path (never promoted, or rolled back: false)"},
                        "validation": _ref("Validation"),
                    },
                },
            },
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Ready": {
        "type": "object",
        "required": ["status", "model_version"],
        "properties": {"status": {"const": "ready"}, "model_version": {"type": "string"}},
    },
}

_IMAGE_BODY = {
    "required": True,
    "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {"type": "object", "additionalProperties": {"type": "string", "format": "binary"}},
        },
    },
}
_IMAGE_ERRORS = {
    "400": _problem("undecodable image"),
    "413": _problem("over the byte, pixel or images-per-request limit"),
    "415": _problem("not an image/* or multipart body"),
}


def _op(summary: str, role: str | None, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **(_AUTH_ERRORS if role else {})}}
    op["security"] = [{"bearer": []}, {"apiKey": []}] if role else []
    if role:
        op["x-role"] = role
    op.update(extra)
    return op


def _q(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _p(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


_PATHS: dict[str, Any] = {
    "/v1/score": {
        "post": _op(
            "Score one image (raw image/* body) or several (multipart)",
            "scorer",
            {"200": _json(_ref("ScoreResponse")), **_IMAGE_ERRORS, "503": _problem("no model loaded, or overloaded")},
            parameters=[
                _q("store", {"type": "boolean"}, "also add the images to the pool (deduplicated)"),
                _q("top_k", {"type": "integer", "minimum": 1}, "how many classes in top_k (default 3)"),
                _q("filename", {"type": "string"}, "a name for a raw-body image"),
            ],
            requestBody=_IMAGE_BODY,
        )
    },
    "/v1/samples": {
        "post": _op(
            "Upload images into the pool",
            "annotator",
            {"201": _json(_ref("SamplesCreated"), "Created"), **_IMAGE_ERRORS},
            requestBody=_IMAGE_BODY,
        )
    },
    "/v1/samples/{sample_id}": {
        "get": _op(
            "One sample with its standing decision and the active model's prediction",
            "annotator",
            {"200": _json(_ref("Sample")), "404": _problem("unknown sample")},
            parameters=[_p("sample_id", {"type": "integer"})],
        )
    },
    "/v1/samples/{sample_id}/image": {
        "get": _op(
            "The sample's image bytes (original type), or a JPEG thumbnail with ?size",
            "annotator",
            {
                "200": {"description": "image bytes", "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}},
                "304": {"description": "not modified (If-None-Match)"},
                "404": _problem("unknown sample or missing file"),
            },
            parameters=[_p("sample_id", {"type": "integer"}), _q("size", {"type": "integer", "minimum": 0, "maximum": 4096})],
        )
    },
    "/v1/queue": {
        "get": _op(
            "The next samples to annotate, leased to the caller",
            "annotator",
            {"200": _json(_ref("Queue")), "422": _problem("bad n or strategy"), "503": _problem("no active model and no embedded pool")},
            parameters=[
                _q("n", {"type": "integer", "minimum": 1}, "how many (default 20)"),
                _q("strategy", {"enum": list(acquisition.STRATEGIES)}, "default hybrid"),
                _q("annotator", {"type": "string"}, "lease holder (default: the key's name)"),
            ],
        )
    },
    "/v1/annotations": {
        "post": _op(
            "Record accept/correct/reject decisions (each committed durably)",
            "annotator",
            {
                "200": _json(_ref("AnnotationsResult")),
                "415": _problem("not JSON"),
                "422": _problem("invalid items (listed in errors; the valid ones were committed)"),
            },
            requestBody=_body("AnnotationsRequest"),
        )
    },
    "/v1/annotations/undo": {
        "post": _op(
            "Withdraw the annotator's latest decision on a sample",
            "annotator",
            {"200": _json(_ref("UndoResult")), "415": _problem("not JSON"), "422": _problem("invalid body or unknown sample")},
            requestBody=_body("UndoRequest"),
        )
    },
    "/v1/labels": {
        "get": _op("The project's labels", "annotator", {"200": _json(_ref("Labels"))}),
        "post": _op(
            "Add a label (picked up by the next retrain)",
            "admin",
            {"201": _json(_ref("Labels"), "Created"), "200": _json(_ref("Labels"), "Already there"), "422": _problem("invalid name")},
            requestBody=_body("LabelCreate"),
        ),
    },
    "/v1/labels/examples": {
        "get": _op(
            "Labeled examples of one class, newest first (the page shows them beside the guess)",
            "annotator",
            {"200": _json(_ref("LabelExamples")), "422": _problem("no label given")},
            parameters=[_q("label", {"type": "string"}), _q("n", {"type": "integer", "minimum": 1, "maximum": 24})],
        )
    },
    "/v1/jobs": {
        "get": _op(
            "Recent jobs, newest first",
            "admin",
            {"200": _json(_ref("JobList"))},
            parameters=[_q("limit", {"type": "integer", "minimum": 1})],
        ),
        "post": _op(
            "Queue a job",
            "admin",
            {"202": _json(_ref("Job"), "Accepted"), "409": _problem("a retrain is already queued or running"), "422": _problem("bad kind")},
            requestBody=_body("JobCreate"),
        ),
    },
    "/v1/jobs/{job_id}": {
        "get": _op(
            "One job", "admin", {"200": _json(_ref("Job")), "404": _problem("unknown job")}, parameters=[_p("job_id", {"type": "string"})]
        )
    },
    "/v1/jobs/{job_id}/cancel": {
        "post": _op(
            "Cancel a queued or running job",
            "admin",
            {"200": _json(_ref("Job")), "404": _problem("unknown job"), "409": _problem("already finished")},
            parameters=[_p("job_id", {"type": "string"})],
        )
    },
    "/v1/models": {"get": _op("Model versions", "admin", {"200": _json(_ref("Models"))})},
    "/v1/models/{version}/promote": {
        "post": _op(
            "Activate a version; the scorer swaps at once and the pool is rescored in the background",
            "admin",
            {"200": _json(_ref("Activated")), "404": _problem("unknown version"), "422": _problem("malformed version")},
            parameters=[_p("version", {"type": "string", "pattern": "^v[0-9]{4,}$"})],
        )
    },
    "/v1/models/rollback": {
        "post": _op(
            "Activate the previously active version",
            "admin",
            {"200": _json(_ref("Activated")), "409": _problem("no earlier version")},
        )
    },
    "/v1/stats": {"get": _op("Pool, labels per class, the learning curve", "annotator", {"200": _json(_ref("Stats"))})},
    "/healthz": {"get": _op("The process answers", None, {"200": _json(_ref("Health"))})},
    "/readyz": {"get": _op("A model is loaded", None, {"200": _json(_ref("Ready")), "503": _problem("no model loaded yet")})},
    "/metrics": {
        "get": _op(
            "Prometheus metrics",
            None,
            {"200": {"description": "text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}},
        )
    },
    "/v1/openapi.json": {"get": _op("This document", None, {"200": _json({"type": "object"})})},
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "edge-al",
            "version": __version__,
            "description": "Edge active-learning scoring service. Errors are application/problem+json (RFC 9457). "
            "Roles: scorer (score), annotator (queue, annotations, samples, labels GET, stats), admin (all). "
            "Times are Unix seconds.",
        },
        "servers": [{"url": "/"}],
        "paths": _PATHS,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


@bp.get("/v1/openapi.json")
@public
def openapi_json() -> Response:
    return jsonify(document())
