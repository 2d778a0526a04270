"""The HTTP app of a scoring box (``edge-al serve --role scoring``): /v1/score, /v1/box, health.

The same ``/v1/score`` as the central service (``score.score_uploads``: one contract for line
systems), from the box's local model; ``?store=true`` queues the image in the box's outbox, durable
before the answer is sent (``queued: true`` and its ``sha256`` in the result), and the courier
delivers it to the central pool. ``GET /v1/box`` says what the box serves, whether the central side
answers and what waits in the outbox. ``/healthz``, ``/readyz``, ``/metrics`` and
``/v1/openapi.json`` as on the central service. The only key accepted is the box's scorer key
(``EDGE_AL_CENTRAL_KEY``), unless auth is off (localhost only).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app, g, jsonify
from flask.wrappers import Response
from flask_openapi3 import APIBlueprint

from edge_al.box import BoxSettings, ScoringBox
from edge_al.config import Settings, env_values
from edge_al.dispatch import ModelHolder
from edge_al.registry import Registry

from . import DEFAULTS, ENV_KEYS
from .auth import require
from .metrics import Metrics
from .openapi import op
from .schemas import BoxStatus, ScoreQuery, ScoreResponse

__all__ = ["BoxKeys", "BoxService", "create_box_app"]

bp = APIBlueprint("box", __name__)


@dataclass(frozen=True)
class _Key:
    id: int
    key_hash: str
    role: str
    name: str


class BoxKeys:
    """The keys a box accepts (a ``KeySource``): its scorer key, as a line system's."""

    def __init__(self, token: str) -> None:
        self._keys = [_Key(1, hashlib.sha256(token.encode("utf-8")).hexdigest(), "scorer", "line")] if token else []

    def api_keys(self, include_revoked: bool = True) -> list[_Key]:
        return list(self._keys)


@dataclass
class BoxService:
    """What the box's views share (``app.extensions["edge_al"]``; health and metrics read it as they
    read the central ``Service``: ``holder``, ``registry``, ``jobs``, ``metrics``; there is no ``store``)."""

    settings: Settings
    registry: Registry
    holder: ModelHolder
    box: ScoringBox
    metrics: Metrics
    keys: BoxKeys
    config: dict[str, Any] = field(default_factory=dict)
    jobs: None = None
    _started: bool = False

    def start(self) -> None:
        """Compile the local active model (if any), then follow the central side and send the outbox."""
        if not self._started:
            self.holder.start()
            self.box.start()
            self._started = True

    def stop(self) -> None:
        if self._started:
            self.box.stop()
            self.holder.stop()
            self._started = False


def _svc() -> BoxService:
    svc: BoxService = current_app.extensions["edge_al"]
    return svc


_SCORE_OP = op("Score images from the box's local model; ?store=true queues them for the central pool", "scorer",
               {200: ScoreResponse}, 400, 409, 413, 415, 422, 503)  # fmt: skip


@bp.post("/v1/score", **_SCORE_OP)
@require("scorer")
def score(query: ScoreQuery) -> tuple[Response, int]:
    from .score import result_row, score_uploads

    svc = _svc()
    if query.store:
        svc.box.check_can_send()
    results, refused = [], []
    for up, sc, scores in score_uploads(svc.holder, svc.settings, svc.metrics):
        row = result_row(up, sc, scores, query.top_k)
        if query.store or svc.box.sampled(up.data):
            sha, why = svc.box.queue(up.data, up.info.format)
            if query.store:
                row["queued"], row["sha256"] = sha is not None, sha
            if why:
                refused.append(why)
        results.append(row)
    doc: dict[str, Any] = {"model_version": results[0]["model_version"] if results else None, "results": results}
    if refused and query.store:
        doc["detail"] = refused[0]
    return jsonify(doc), 200


@bp.get("/v1/box", **op("What the box serves, whether the central side answers, what waits in the outbox", "scorer", {200: BoxStatus}))
@require("scorer")
def status() -> Response:
    svc = _svc()
    return jsonify({"serving": svc.holder.version, "ready": svc.holder.ready, "local_active": svc.registry.active_version(),
                    **svc.box.stats()})  # fmt: skip


def create_box_app(settings: Settings, box: BoxSettings, test_config: dict[str, Any] | None = None) -> Flask:
    """The app of a scoring box for the box's home ``settings`` (its local registry and outbox)."""
    from . import errors, health, openapi
    from ._util import SafeJSONProvider
    from .auth import check_request

    settings.home.mkdir(parents=True, exist_ok=True)
    cfg = {**DEFAULTS, **env_values(ENV_KEYS), **(test_config or {})}
    app = openapi.new_app(__name__)
    app.config.update(cfg)
    app.json = SafeJSONProvider(app)
    app.json.sort_keys = False
    registry = Registry(settings.registry_dir)
    holder = ModelHolder(settings, registry, device=str(cfg["DEVICE"]), max_batch=int(cfg["MAX_BATCH"]),
                         max_wait_ms=float(cfg["MAX_WAIT_MS"]), batching=bool(cfg["BATCHING"]),
                         adaptive=str(cfg["BATCH_POLICY"]) != "fixed", poll_s=float(cfg["POLL_S"]), novelty=False)  # fmt: skip
    svc = BoxService(settings, registry, holder, ScoringBox(settings, box, holder), Metrics(), BoxKeys(box.central_key), cfg)
    svc.metrics.bind(svc)
    app.extensions["edge_al"] = svc
    errors.register_error_handlers(app)
    for api in (bp, health.bp, openapi.bp):
        app.register_api(api)

    @app.before_request
    def _before() -> None:
        g.t0 = time.perf_counter()
        check_request(svc.keys, bool(app.config["AUTH_REQUIRED"]))

    @app.after_request
    def _after(resp: Response) -> Response:
        from flask import request

        rule = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        svc.metrics.observe_request(request.method, rule, resp.status_code, time.perf_counter() - getattr(g, "t0", time.perf_counter()))
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        return resp

    return app
