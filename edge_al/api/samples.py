"""The pool over HTTP: upload samples, read one, fetch its image (or a thumbnail)."""

from __future__ import annotations

from typing import Any

import cv2
from flask import jsonify, request
from flask.wrappers import Response
from flask_openapi3 import APIBlueprint

from edge_al.errors import ImageError, NotFound
from edge_al.images import decode, probe, reduction_for
from edge_al.pool import ingest_bytes
from edge_al.results import label_name
from edge_al.storage import images_storage

from . import service
from ._util import read_uploads
from .auth import require
from .openapi import IMAGE_TYPES, binary_response, image_body, op
from .schemas import ImageQuery, Sample, SamplePath, SamplesCreated

__all__ = ["bp", "sample_doc"]

bp = APIBlueprint("samples", __name__)

_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "BMP": "image/bmp", "TIFF": "image/tiff", "WEBP": "image/webp"}


@bp.post("/v1/samples", **op("Upload images into the pool", "annotator", {201: SamplesCreated}, 400, 413, 415, **image_body()))
@require("annotator")
def upload() -> tuple[Response, int]:
    svc = service()
    uploads = read_uploads(svc.settings.max_pixels, svc.settings.max_file_bytes)
    out = []
    for up in uploads:
        sample, created = ingest_bytes(svc.store, svc.settings, up.data, filename=up.filename or "upload", source="upload")
        out.append({"id": sample.id, "sha256": sample.sha256, "created": created, "filename": up.filename})
    return jsonify({"samples": out}), 201


def sample_doc(sample_id: int) -> dict[str, Any]:
    svc = service()
    s = svc.store.sample(sample_id)
    history = svc.store.annotation_history(sample_id)
    last = history[-1] if history else None
    annotation = None
    if last is not None and last.action != "undo":
        annotation = {"action": last.action, "label": last.label, "annotator": last.annotator, "created_at": last.created_at}
    prediction = None
    mv = svc.registry.active()
    if mv is not None:
        pred = svc.store.prediction(sample_id, mv.version)
        if pred is not None:
            labels = mv.labels
            names = [label_name(labels, i) for i in range(len(pred.probs))]
            prediction = {
                "model_version": mv.version,
                "label": label_name(names, pred.label_index),
                "confidence": pred.confidence,
                "probs": {n: float(p) for n, p in zip(names, pred.probs.tolist(), strict=True)},
                "scores": {k: float(v) for k, v in pred.scores.items()},
            }
    return {
        "id": s.id,
        "sha256": s.sha256,
        "width": s.width,
        "height": s.height,
        "source": s.source,
        "created_at": s.created_at,
        "image_url": f"/v1/samples/{s.id}/image",
        "annotation": annotation,
        "history": [{"action": a.action, "label": a.label, "annotator": a.annotator, "created_at": a.created_at} for a in history],
        "prediction": prediction,
    }


_SAMPLE_OP = op("One sample with its standing decision and the active model's prediction", "annotator", {200: Sample}, 404, 422)
_IMAGE_OK = {
    200: binary_response("the image bytes (original type), or a JPEG thumbnail with ?size", IMAGE_TYPES),
    304: {"description": "not modified (If-None-Match)"},
}


@bp.get("/v1/samples/<int:sample_id>", **_SAMPLE_OP)
@require("annotator")
def get_sample(path: SamplePath) -> Response:
    return jsonify(sample_doc(path.sample_id))


@bp.get("/v1/samples/<int:sample_id>/image", **op("The sample's image", "annotator", _IMAGE_OK, 404, 422))
@require("annotator")
def get_image(path: SamplePath, query: ImageQuery) -> Response:
    svc = service()
    sample_id, size = path.sample_id, query.size
    s = svc.store.sample(sample_id)
    try:
        data = images_storage(svc.settings).read_bytes(s.path)
    except OSError as exc:  # the message names no server path
        raise NotFound(
            f"The image file of sample {sample_id} is gone from the server ({exc.strerror or type(exc).__name__}): "
            "ask an administrator to restore it or to re-ingest the image."
        ) from None
    etag = f"{s.sha256}-{size}"
    if request.if_none_match.contains(etag):
        resp = Response(status=304)
        resp.set_etag(etag)
        return resp
    if size and max(s.width, s.height) > size:
        scale = size / max(s.width, s.height)
        tw, th = max(1, round(s.width * scale)), max(1, round(s.height * scale))
        reduce = reduction_for(s.width, s.height, (tw, th)) if data[:2] == b"\xff\xd8" else 1
        img = cv2.resize(decode(data, reduce=reduce), (tw, th), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise ImageError(f"Sample {sample_id}: the thumbnail could not be encoded.")
        body, mime = buf.tobytes(), "image/jpeg"
    else:
        info = probe(data, max_pixels=svc.settings.max_pixels * 4, max_bytes=max(len(data), 1), verify=False)
        body, mime = data, _MIME.get(info.format, "application/octet-stream")
    resp = Response(body, mimetype=mime)
    resp.set_etag(etag)
    resp.headers["Cache-Control"] = "private, max-age=86400"
    return resp
