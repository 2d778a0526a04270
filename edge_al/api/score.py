"""POST /v1/score: classify images for the line, optionally feeding them into the pool."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from flask import current_app, jsonify
from flask.wrappers import Response
from flask_openapi3 import APIBlueprint

from edge_al.config import Settings
from edge_al.errors import NoActiveModel
from edge_al.pool import ingest_bytes
from edge_al.results import label_name
from edge_al.scoring import EmbeddingFile

from . import service
from ._util import Upload, clean, read_uploads
from .auth import require
from .errors import Problem
from .openapi import image_body, op
from .schemas import ScoreQuery, ScoreResponse

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["bp", "result_row", "score_uploads"]

bp = APIBlueprint("score", __name__)


_SCORE_OP = op("Score one image (raw body of an image type) or several (multipart)", "scorer", {200: ScoreResponse},
               400, 413, 415, 422, 503, **image_body())  # fmt: skip


@bp.post("/v1/score", **_SCORE_OP)
@require("scorer")
def score(query: ScoreQuery) -> tuple[Response, int]:
    svc = service()
    settings = svc.settings
    results: list[dict[str, Any]] = []
    stored: list[tuple[int, Any, dict[str, float | None]]] = []
    for up, sc, scores in score_uploads(svc.holder, settings, svc.metrics):
        row = result_row(up, sc, scores, query.top_k)
        if query.store:
            sample, created = ingest_bytes(svc.store, settings, up.data, filename=up.filename or "upload", source="score")
            row["sample_id"] = sample.id
            row["created"] = created
            stored.append((sample.id, sc, scores))
        results.append(row)
    if stored:
        _record_predictions(stored)
    return jsonify(clean({"model_version": results[0]["model_version"] if results else None, "results": results})), 200


def score_uploads(holder: Any, settings: Settings, metrics: Metrics) -> list[tuple[Upload, Any, dict[str, float | None]]]:
    """The request's images (``read_uploads``: probed, limits held), scored by ``holder`` in one call:
    ``(upload, Scored, acquisition scores)`` per image, in order. What every ``/v1/score`` shares
    (the central service's and a scoring box's)."""
    uploads = read_uploads(settings.max_pixels, settings.max_file_bytes)
    if holder is None or not holder.ready:
        raise NoActiveModel("No model is loaded yet: publish and promote a model version (GET /readyz says when one is).")
    images = [holder.preprocess(u.data, u.info.width, u.info.height) for u in uploads]
    t0 = time.perf_counter()
    try:
        scored = holder.score(images, timeout=float(current_app.config["SCORE_TIMEOUT_S"]))
    except TimeoutError as exc:
        raise Problem(503, f"{exc} The service is overloaded: retry shortly.", slug="overloaded", headers={"Retry-After": "1"}) from None
    metrics.inference.observe(time.perf_counter() - t0)
    metrics.request_images.observe(len(images))
    out = []
    for up, sc in zip(uploads, scored, strict=True):
        metrics.images.labels(sc.version or "").inc()
        out.append((up, sc, _acquisition_scores(holder, sc)))
    return out


def result_row(up: Upload, sc: Any, scores: dict[str, float | None], top_k: int) -> dict[str, Any]:
    """One image's answer: label, confidence, the ``top_k`` classes, acquisition scores, the version."""
    probs = np.asarray(sc.probs, dtype=np.float32)
    order = np.argsort(-probs, kind="stable")[:top_k]
    best = int(order[0])
    labels = list(sc.labels)
    return {
        "filename": up.filename,
        "label": label_name(labels, best),
        "confidence": float(probs[best]),
        "top_k": [{"label": label_name(labels, i), "probability": float(probs[i])} for i in order.tolist()],
        "scores": scores,
        "model_version": sc.version,
    }


def _acquisition_scores(holder: Any, sc: Any) -> dict[str, float | None]:
    """Uncertainty, plus FRE/k-NN novelty when the holder has a labeled reference for the version."""
    method = getattr(holder, "acquisition_scores", None)
    if method is not None:
        raw = method(sc)
    else:
        from edge_al.dispatch import acquisition_scores

        raw = acquisition_scores(sc)
    return {k: (None if v is None else float(v)) for k, v in raw.items()}


def _record_predictions(stored: list[tuple[int, Any, dict[str, float | None]]]) -> None:
    """Keep what the model said about stored images, so they join the queue without a rescore:
    embedding rows first, then prediction rows (the order ``score_pool`` uses)."""
    svc = service()
    by_version: dict[str, list[tuple[int, Any, dict[str, float | None]]]] = {}
    for sid, sc, scores in stored:
        by_version.setdefault(sc.version, []).append((sid, sc, scores))
    for version, rows in by_version.items():
        if not version:
            continue
        rows.sort(key=lambda r: r[0])
        ids = np.array([sid for sid, _, _ in rows], dtype=np.int64)
        embs = np.stack([np.asarray(sc.embedding, dtype=np.float32) for _, sc, _ in rows])
        emb_file = EmbeddingFile(svc.settings.embeddings_dir / f"{version}.f16", embs.shape[1])
        try:
            emb_file.write(ids, embs)
        finally:
            emb_file.close()
        svc.store.put_predictions(
            version,
            [(sid, np.asarray(sc.probs, dtype=np.float32), {k: v for k, v in scores.items() if v is not None})
             for sid, sc, scores in rows],
        )  # fmt: skip
