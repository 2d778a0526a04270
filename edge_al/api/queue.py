"""GET /v1/queue: what to annotate next, leased to the caller so two annotators never share one.

The ranking excludes samples leased to anyone else; the chosen ones are then leased in one
transaction, which gives a sample to at most one holder (a concurrent caller that ranked the
same sample loses it there and gets the next ones instead). Asking again as the same holder
renews that holder's leases; a lease that expires returns its sample to the queue.

The holder is the key's annotator (``Principal.acting_as``: only an admin may name another with
``?annotator=``), so nobody takes over another's live lease. A holder keeps at most
``MAX_LEASES_PER_KEY`` live leases (200): at the limit the queue ranks only the samples it
already holds (renewing them) and hands out nothing new until it decides some or they expire;
near it, fewer items than ``n``. ``leases_held`` and ``lease_limit`` in the answer say where it stands.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, jsonify
from flask.wrappers import Response
from flask_openapi3 import APIBlueprint

from edge_al.errors import InvalidInput, NoActiveModel
from edge_al.features import find_backbone
from edge_al.selection import select_next

from . import service
from ._util import clean
from .auth import current_principal, require
from .openapi import op
from .schemas import Queue, QueueQuery

__all__ = ["bp"]

bp = APIBlueprint("queue", __name__)


_QUEUE_OP = op("The next samples to annotate, leased to the caller", "annotator", {200: Queue}, 409, 422, 503)


@bp.get("/v1/queue", **_QUEUE_OP)
@require("annotator")
def next_items(query: QueueQuery) -> Response:
    svc = service()
    n, strategy = query.n, str(query.strategy)
    most = int(current_app.config["MAX_QUEUE_N"])
    if n > most:
        raise InvalidInput(f"The 'n' parameter must be an int in [1, {most}]. Got {n} instead.")
    holder = current_principal().acting_as(query.annotator.strip() or None)
    limit = int(current_app.config["MAX_LEASES_PER_KEY"])
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
        held = svc.store.held_ids(holder)
        if len(held) >= limit:  # at the limit: only what it holds already (renewed), nothing new
            exclude |= set(svc.store.sample_ids().tolist()) - held
        try:
            # no model yet: select_next ranks the embedded pool for a cold start (typical, diverse)
            cands = select_next(
                svc.settings, svc.store, svc.registry, n - len(items), strategy, exclude_ids=exclude, version=mv.version if mv else None
            )
        except ValueError as exc:  # acquisition parameter errors
            raise InvalidInput(str(exc)) from None
        if not cands:
            break
        # each lease's end as stored, not this process's clock after the write: the lock wait
        # before the grant would make that a promise the store does not keep
        got = svc.store.lease([c.sample_id for c in cands], holder=holder, seconds=seconds, max_live=limit)
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
                    "lease_expires_at": got[c.sample_id],
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
                "lease_limit": limit,
                "leases_held": len(svc.store.held_ids(holder)),
                "labels": labels,
                "items": items,
            }
        )
    )
