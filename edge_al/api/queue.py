"""GET /v1/queue: what to annotate next, leased to the caller so two annotators never share one.

The ranking excludes samples leased to anyone else; the chosen ones are then leased in one
transaction, which gives a sample to at most one holder (a concurrent caller that ranked the
same sample loses it there and gets the next ones instead). Asking again as the same holder
renews that holder's leases; a lease that expires returns its sample to the queue.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.wrappers import Response

from edge_al import acquisition
from edge_al.errors import InvalidInput, NoActiveModel
from edge_al.features import find_backbone
from edge_al.selection import select_next

from . import service
from ._util import clean, query_int
from .auth import current_principal, require

__all__ = ["bp"]

bp = Blueprint("queue", __name__)


@bp.get("/v1/queue")
@require("annotator")
def next_items() -> Response:
    svc = service()
    n = query_int("n", 20, 1, int(current_app.config["MAX_QUEUE_N"]))
    strategy = request.args.get("strategy", acquisition.DEFAULT_STRATEGY) or acquisition.DEFAULT_STRATEGY
    if strategy not in acquisition.STRATEGIES:
        raise InvalidInput(f"The 'strategy' parameter must be one of {', '.join(acquisition.STRATEGIES)}. Got {strategy!r} instead.")
    annotator = (request.args.get("annotator") or "").strip()[:128]
    holder = annotator or current_principal().holder
    seconds = int(current_app.config["LEASE_SECONDS"])
    mv = svc.registry.active()
    if mv is None and find_backbone(svc.settings) is None:
        raise NoActiveModel(
            "No model version is active and the pool is not embedded: run `edge-al embed` for a cold-start queue, "
            "or train and export a model, then score the pool."
        )
    items: list[dict[str, Any]] = []
    lost: set[int] = set()
    for _ in range(3):  # a concurrent caller can take some of ours; rank again without them
        exclude = svc.store.leased_ids(exclude_holder=holder) | lost | {it["sample_id"] for it in items}
        try:
            # no model yet: select_next ranks the embedded pool for a cold start (typical, diverse)
            cands = select_next(
                svc.settings, svc.store, svc.registry, n - len(items), strategy, exclude_ids=exclude, version=mv.version if mv else None
            )
        except ValueError as exc:  # acquisition parameter errors
            raise InvalidInput(str(exc)) from None
        if not cands:
            break
        got = set(svc.store.lease([c.sample_id for c in cands], holder=holder, seconds=seconds))
        expires = time.time() + seconds
        for c in cands:
            if c.sample_id not in got:
                lost.add(c.sample_id)
                continue
            items.append(
                {
                    "sample_id": c.sample_id,
                    "image_url": f"/v1/samples/{c.sample_id}/image",
                    "predicted": c.predicted,
                    "confidence": c.confidence,
                    "probs": c.probs,
                    "score": c.score,
                    "scores": c.components,
                    "reason": c.reason,
                    "lease_expires_at": expires,
                }
            )
        if len(items) >= n or len(got) == len(cands):
            break
    labels = list(svc.store.labels())
    labels += [x for x in (mv.labels if mv else []) if x not in labels]
    return jsonify(
        clean(
            {
                "model_version": mv.version if mv else None,
                "strategy": strategy,
                "holder": holder,
                "lease_seconds": seconds,
                "labels": labels,
                "items": items,
            }
        )
    )
