"""The state of a workspace at a glance: pool, labels per class, the active model.

Shared by ``edge-al status`` and ``GET /v1/stats``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .figures import validation_summary
from .registry import Registry, headline_metrics, headline_source
from .store import Store

__all__ = ["status_doc", "validation_of"]


def status_doc(store: Store, registry: Registry) -> dict[str, Any]:
    current = store.current_annotations()
    per_class = Counter(a.label for a in current.values() if a.label is not None)
    rejected = sum(1 for a in current.values() if a.action == "reject")
    total = store.count_samples()
    mv = registry.active()
    predicted: Counter[str] = Counter()
    if mv is not None:
        for idx, n in store.unlabeled_predicted_counts(mv.version).items():
            predicted[mv.labels[idx] if idx < len(mv.labels) else str(idx)] = n
    return {
        "pool_size": total,
        "labeled": sum(per_class.values()),
        "rejected": rejected,
        "unlabeled": total - len(current),
        "labels": store.labels(),
        "labeled_per_class": dict(per_class),
        "unlabeled_predicted_per_class": dict(predicted),
        "active_model": None
        if mv is None
        else {
            "version": mv.version,
            "precision": mv.meta.get("precision"),
            "metrics": headline_metrics(mv.meta),
            "num_train_labels": mv.meta.get("num_train_labels"),
            "validation": validation_of(mv.meta),
        },
        "scored_by_active": len(store.scored_ids(mv.version)) if mv else 0,
    }


def validation_of(meta: dict[str, Any]) -> dict[str, Any]:
    """``{"n", "trusted", "note"}`` of a version's headline figures (see :mod:`edge_al.figures`)."""
    return validation_summary(headline_source(meta), len(meta.get("labels") or []))
