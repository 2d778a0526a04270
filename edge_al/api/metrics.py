"""Prometheus metrics of one app, in its own ``CollectorRegistry`` (several apps per process in tests).

Counted per request (route = the URL rule, e.g. ``/v1/samples/<int:sample_id>``, never the raw path):
``edge_al_http_requests_total{method,route,status}``, ``edge_al_http_request_duration_seconds``.
Observed by the score route: ``edge_al_score_images_total``, ``edge_al_inference_seconds``
(one ``holder.score`` call: queueing + batching + inference).
Read at scrape time: pool size, labeled/rejected counts, jobs queued and running, the active
model version (``edge_al_active_model_info{version}``), and the dispatcher's own figures from
``ModelHolder.stats()`` (batch sizes, queue depth, inference time), numeric entries exported as
``edge_al_dispatch_<name>``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["Metrics"]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_NAME_RE = re.compile(r"[^a-zA-Z0-9_]")
# ModelHolder.stats() entries that only grow: exported as counters (name + "_total")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_DISPATCH_COUNTERS = {"batches", "images", "errors", "swaps", "inference_seconds", "batch_sizes"}


class _StateCollector(Collector):
    """Figures read from the store, registry, holder and job manager when scraped."""

    def __init__(self) -> None:
        self.svc: Any = None  # the app's Service, or a scoring box's BoxService

    def collect(self) -> Iterator[Metric]:
        svc = self.svc
        if svc is None:
            return
        try:
            yield from self._collect(svc)
        except Exception:  # a scrape must not fail because one source did
            log.exception("metrics collection failed")

    def _collect(self, svc: Any) -> Iterable[Metric]:
        store = getattr(svc, "store", None)  # a scoring box has none: no pool figures
        if store is not None:
            yield from _pool_metrics(store)
        holder = svc.holder
        version = None
        if holder is not None:
            version = holder.version
            ready = GaugeMetricFamily("edge_al_model_ready", "1 when a model is loaded and serving")
            ready.add_metric([], 1.0 if holder.ready else 0.0)
            yield ready
            yield from _dispatch_metrics(holder.stats())
        info = InfoMetricFamily("edge_al_active_model", "The model version serving requests (registry's active one if none loaded)")
        info.add_metric([], {"version": version or svc.registry.active_version() or ""})
        yield info
        if svc.jobs is not None:
            counts: dict[str, int] = {}
            for job in svc.jobs.list(limit=200):
                state = str(job.get("state", ""))
                counts[state] = counts.get(state, 0) + 1
            jobs = GaugeMetricFamily("edge_al_jobs", "Jobs among the latest 200, by state", labels=["state"])
            for state in ("queued", "running", "succeeded", "failed", "cancelled"):
                jobs.add_metric([state], counts.get(state, 0))
            yield jobs


def _pool_metrics(store: Any) -> Iterable[Metric]:
    """Pool size, labeled, rejected and leased samples of the workspace's store."""
    pool = GaugeMetricFamily("edge_al_pool_size", "Samples in the pool")
    pool.add_metric([], store.count_samples())
    yield pool
    current = store.current_annotations()
    lab = GaugeMetricFamily("edge_al_labeled", "Samples whose latest decision gives a label")
    lab.add_metric([], sum(1 for a in current.values() if a.label is not None))
    yield lab
    rej = GaugeMetricFamily("edge_al_rejected", "Samples whose latest decision is reject")
    rej.add_metric([], sum(1 for a in current.values() if a.action == "reject"))
    yield rej
    leased = GaugeMetricFamily("edge_al_leased", "Samples leased to an annotator now")
    leased.add_metric([], len(store.leased_ids()))
    yield leased


def _dispatch_metrics(stats: dict[str, Any], prefix: str = "edge_al_dispatch") -> Iterable[Metric]:
    """Numeric entries of ``ModelHolder.stats()`` as gauges; a dict of numbers (e.g. a batch-size
    histogram) becomes one gauge with a ``key`` label."""
    for key, value in sorted(stats.items()):
        name = f"{prefix}_{_NAME_RE.sub('_', str(key))}"
        if isinstance(value, bool):
            fam = GaugeMetricFamily(name, f"ModelHolder.stats()[{key!r}]")
            fam.add_metric([], 1.0 if value else 0.0)
            yield fam
        elif isinstance(value, (int, float)):
            kind = CounterMetricFamily if key in _DISPATCH_COUNTERS else GaugeMetricFamily
            num = kind(name, f"ModelHolder.stats()[{key!r}]")
            num.add_metric([], float(value))
            yield num
        elif isinstance(value, dict) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()):
            # e.g. batch_sizes {size: batches}: edge_al_dispatch_batch_sizes_total{key="8"}
            kind = CounterMetricFamily if key in _DISPATCH_COUNTERS else GaugeMetricFamily
            by_key = kind(name, f"ModelHolder.stats()[{key!r}] by key", labels=["key"])
            for k, v in sorted(value.items(), key=lambda kv: str(kv[0])):
                by_key.add_metric([str(k)], float(v))
            yield by_key


class Metrics:
    """The app's collectors; ``render()`` gives the Prometheus text exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "edge_al_http_requests", "HTTP requests by route (URL rule) and status", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "edge_al_http_request_duration_seconds",
            "HTTP request latency by route (URL rule)",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "edge_al_inference_seconds",
            "Time of one ModelHolder.score call from the score route (queueing, batching, inference)",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter("edge_al_score_images", "Images scored over HTTP", ["model_version"], registry=self.registry)
        self.request_images = Histogram(
            "edge_al_score_request_images", "Images per score request", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry
        )
        self._state = _StateCollector()
        self.registry.register(self._state)

    def bind(self, svc: Any) -> None:
        """``svc``: the app's ``Service``, or anything with ``holder``, ``registry``, ``jobs`` (and
        optionally ``store``) such as a scoring box's."""
        self._state.svc = svc

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request. Label values are bounded whatever clients send: a method outside
        ``_METHODS`` counts as ``other``, a path no route matches as ``<unmatched>``."""
        method = method if method in _METHODS else "other"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
