"""The HTTP service: ``create_app()`` builds the Flask app, one blueprint per resource.

``create_app`` compiles nothing: the model is compiled when the ``ModelHolder`` starts,
which happens on the first request (``START_MODEL="lazy"``, the default), right away
(``True``: ``edge-al serve`` does this after binding, in its only process), or never
(``False``, tests of the no-model paths). So a pre-forking server (gunicorn without
``--preload``) builds the app, and the model, in each worker after the fork.

Configuration: defaults below, then ``EDGE_AL_<KEY>`` environment variables for the keys in
``ENV_KEYS`` (read by ``edge_al.config.env_values``, the one loader), then ``test_config``. The service objects (settings, store, registry, model
holder, job manager, metrics) live on ``app.extensions["edge_al"]`` as a ``Service``.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, g, request
from flask.wrappers import Response

from edge_al.config import Settings, env_values, load_settings
from edge_al.registry import Registry
from edge_al.store import Store, open_store

if TYPE_CHECKING:
    from flask_openapi3 import OpenAPI

    from edge_al.dispatch import ModelHolder
    from edge_al.jobs import JobManager

    from .metrics import Metrics

__all__ = ["DEFAULTS", "ENV_KEYS", "Service", "create_app", "register_routes", "service"]

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "AUTH_REQUIRED": True,
    "MAX_CONTENT_LENGTH": 128 * 1024 * 1024,  # whole request body, bytes (werkzeug answers 413)
    "MAX_IMAGES_PER_REQUEST": 64,
    "MAX_ANNOTATIONS_PER_REQUEST": 1000,
    "MAX_QUEUE_N": 200,
    "LEASE_SECONDS": 600,
    "MAX_LEASES_PER_KEY": 200,  # live leases one annotator (key) may hold
    "RETRAIN_AFTER": None,  # None: settings.retrain_after
    "SCORE_TIMEOUT_S": 30.0,
    "START_MODEL": "lazy",  # True | False | "lazy"
    "DEVICE": "CPU",
    "MAX_BATCH": 8,
    "MAX_WAIT_MS": 5.0,
    "BATCHING": True,
    "BATCH_POLICY": "adaptive",  # or "fixed" (edge_al.serving.batcher)
    "POLL_S": 2.0,
    "JOBS": True,  # False: no job manager (POST /v1/jobs answers 503)
    "HOLDER": None,  # an object with the ModelHolder interface, instead of building one
    "JOB_MANAGER": None,  # an object with the JobManager interface, instead of building one
}

ENV_KEYS: dict[str, Callable[[str], Any]] = {
    "MAX_CONTENT_LENGTH": int,
    "MAX_IMAGES_PER_REQUEST": int,
    "LEASE_SECONDS": int,
    "MAX_LEASES_PER_KEY": int,
    "DEVICE": str,
    "MAX_BATCH": int,
    "MAX_WAIT_MS": float,
    "RATE_LIMIT_SCORER": str,
    "RATE_LIMIT_ANNOTATOR": str,
    "RATE_LIMIT_ADMIN": str,
    "RATE_LIMIT_STORAGE": str,
}


@dataclass
class Service:
    """What the blueprints share (``app.extensions["edge_al"]``)."""

    settings: Settings
    store: Store
    registry: Registry
    holder: ModelHolder | None
    jobs: JobManager | None
    metrics: Metrics
    config: dict[str, Any] = field(default_factory=dict)
    _start_lock: threading.Lock = field(default_factory=threading.Lock)
    _started: bool = False

    @property
    def retrain_after(self) -> int:
        value = self.config.get("RETRAIN_AFTER")
        return int(value) if value is not None else int(self.settings.retrain_after)

    def start_model(self) -> None:
        """Start the model holder once (compiles the active model; idempotent, thread-safe)."""
        if self._started or self.holder is None:
            return
        with self._start_lock:
            if not self._started:
                self.holder.start()
                self._started = True

    def stop(self) -> None:
        if self.holder is not None and self._started:
            self.holder.stop()
            self._started = False


def service() -> Service:
    """The ``Service`` of the current app."""
    svc: Service = current_app.extensions["edge_al"]
    return svc


def _config(settings: Settings, test_config: dict[str, Any] | None) -> dict[str, Any]:
    cfg = dict(DEFAULTS)
    cfg.update(env_values(ENV_KEYS))
    cfg.update(test_config or {})
    return cfg


def register_routes(app: OpenAPI) -> None:
    """Every blueprint of the service on ``app`` (also what the OpenAPI document is generated from)."""
    from . import health, jobs, labels, model_files, models, openapi, queue, samples, score, stats, ui

    # "annotations" is also the __future__ feature bound in this module: import it by full name
    annotations = importlib.import_module("edge_al.api.annotations")
    for api in (
        score.bp,
        samples.bp,
        queue.bp,
        annotations.bp,
        labels.bp,
        jobs.bp,
        model_files.bp,
        models.bp,
        stats.bp,
        health.bp,
        openapi.bp,
    ):
        app.register_api(api)
    app.register_blueprint(ui.bp)


def create_app(settings: Settings | None = None, test_config: dict[str, Any] | None = None) -> Flask:
    """The Flask app for a workspace (``settings`` default: ``load_settings()`` from the environment)."""
    from . import errors, openapi
    from ._util import SafeJSONProvider, require_json_content
    from .auth import check_request
    from .limits import init_limiter
    from .metrics import Metrics

    settings = settings or load_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    cfg = _config(settings, test_config)

    app = openapi.new_app(__name__)
    app.config.update(cfg)
    app.json = SafeJSONProvider(app)
    app.json.sort_keys = False

    store = open_store(settings)
    registry = Registry(settings.registry_dir)
    holder = cfg["HOLDER"]
    if holder is None:
        from edge_al.dispatch import ModelHolder

        holder = ModelHolder(
            settings,
            registry,
            device=str(cfg["DEVICE"]),
            max_batch=int(cfg["MAX_BATCH"]),
            max_wait_ms=float(cfg["MAX_WAIT_MS"]),
            batching=bool(cfg["BATCHING"]),
            adaptive=str(cfg["BATCH_POLICY"]) != "fixed",
            poll_s=float(cfg["POLL_S"]),
            store=store,
        )
    job_manager = cfg["JOB_MANAGER"]
    if job_manager is None and cfg["JOBS"]:
        from edge_al.jobs import JobManager

        job_manager = JobManager(settings, store=store, registry=registry, on_model_change=holder.reload)
    svc = Service(settings, store, registry, holder, job_manager, Metrics(), cfg)
    svc.metrics.bind(svc)
    app.extensions["edge_al"] = svc

    errors.register_error_handlers(app)
    register_routes(app)

    @app.before_request
    def _before() -> None:
        g.t0 = time.perf_counter()
        check_request(store, bool(app.config["AUTH_REQUIRED"]))
        require_json_content()
        if app.config["START_MODEL"] == "lazy" and request.endpoint != "health.healthz":
            svc.start_model()

    init_limiter(app)  # after _before: limits are per key, so the key must be known

    @app.after_request
    def _after(resp: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        t0 = getattr(g, "t0", None)
        svc.metrics.observe_request(request.method, rule, resp.status_code, time.perf_counter() - t0 if t0 else 0.0)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        return resp

    if cfg["START_MODEL"] is True:
        svc.start_model()
    return app
