"""The model lifecycle steps that the CLI and the job worker share: train, export, retrain.

The training side (torch, onnx, nncf) is a plugin: the installed distribution names its workflow
module under the ``edge_al.build`` entry point, loaded only when a verb trains, with an install
hint when the ``train`` extra is missing. This package names no build-side module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .config import Settings
from .errors import MissingDependency
from .pool import ImageCache
from .registry import ModelVersion, Registry, headline_metrics, headline_source
from .scoring import ScoreReport, score_pool
from .storage import images_storage
from .store import Store

__all__ = [
    "RetrainResult",
    "annotations_since_model",
    "balanced_accuracy",
    "evaluate_version",
    "model_created_at",
    "retrain",
    "workflow",
]

log = logging.getLogger(__name__)


def workflow() -> ModuleType:
    """The build side's workflow module (``export.workflow``, found through the ``edge_al.build``
    entry point named ``workflow``), or a clear hint to install the training extra."""
    found = [ep for ep in entry_points(group="edge_al.build") if ep.name == "workflow"]
    if not found:
        raise MissingDependency(
            "No build side is installed (entry point edge_al.build:workflow): reinstall edge-al (pip install 'edge-al[train]')."
        )
    try:
        module: ModuleType = found[0].load()
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in {"torch", "torchvision", "onnx", "nncf", "onnxscript"}:
            raise MissingDependency(
                f"Training and export need {exc.name}: install edge-al[train] (pip install 'edge-al[train]')."
            ) from None
        raise
    return module


def model_created_at(mv: ModelVersion) -> float:
    """When a version was published (epoch seconds): its ``created_at``, else its meta.json's mtime."""
    created = mv.meta.get("created_at")
    if isinstance(created, (int, float)):
        return float(created)
    try:
        return (mv.path / "meta.json").stat().st_mtime
    except OSError:
        return 0.0


def annotations_since_model(store: Store, registry: Registry) -> int:
    """Decisions (accept, correct, reject rows) written since the active model was published, all of
    them while no model is active: the one figure the retrain trigger, ``/v1/stats`` and the
    annotation responses report, with or without the job system."""
    mv = registry.active()
    return store.jobs.decisions_since(model_created_at(mv) if mv is not None else 0.0)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y_true``."""
    classes = np.unique(y_true)
    if len(classes) == 0:
        return float("nan")
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))


def evaluate_version(
    settings: Settings, store: Store, mv: ModelVersion, sample_ids: list[int], labels: list[str], device: str = "CPU"
) -> dict[str, float]:
    """Accuracy and balanced accuracy of a published version on given labeled samples."""
    from .engine import Engine

    eng = Engine(mv.xml, device=device, batch=8)
    with ImageCache(settings.cache_dir, eng.size, images_storage(settings)) as cache:
        images, failed = cache.load_many(store.samples(sample_ids))
    keep = np.setdiff1d(np.arange(len(sample_ids)), np.array(failed, dtype=np.int64))
    probs, _ = eng.infer(images[keep])
    names = eng.labels or mv.labels
    return label_metrics([labels[i] for i in keep], [names[i] for i in probs.argmax(1)] if len(keep) else [])


def label_metrics(labels: list[str], predicted: list[str]) -> dict[str, float]:
    """Accuracy, balanced accuracy and ``n`` of predicted label names against the true ones."""
    pred = np.array(predicted)
    truth = np.array(labels)
    all_names = sorted(set(truth.tolist()) | set(pred.tolist()))
    idx = {n: i for i, n in enumerate(all_names)}
    t = np.array([idx[x] for x in truth], dtype=np.int64)
    p = np.array([idx[x] for x in pred], dtype=np.int64)
    return {
        "accuracy": float(np.mean(t == p)) if len(t) else float("nan"),
        "balanced_accuracy": balanced_accuracy(t, p),
        "n": len(t),
    }


@dataclass
class RetrainResult:
    version: str
    promoted: bool
    reason: str
    previous: str | None
    metrics_new: dict[str, float] = field(default_factory=dict)
    metrics_previous: dict[str, float] = field(default_factory=dict)
    score: ScoreReport | None = None
    export_report: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "promoted": self.promoted,
            "reason": self.reason,
            "previous": self.previous,
            "metrics_new": self.metrics_new,
            "metrics_previous": self.metrics_previous,
            "score": self.score.as_dict() if self.score else None,
        }


def _split_note(meta: dict[str, Any], remeasured: float) -> str:
    """Why the active model's figure here can differ from the one ``status`` shows for it."""
    shown = headline_metrics(meta)["balanced_accuracy"]
    if shown is None or abs(shown - remeasured) < 5e-4:
        return ""
    n = (headline_source(meta) or {}).get("n")
    on = f"its own {n} validation samples" if n else "its own validation samples"
    return (
        f"; `status` showed {shown:.3f} for it, measured at its export on {on}: the held-out split grows with "
        "the labels, so both models are re-measured here on this round's"
    )


def retrain(
    settings: Settings,
    store: Store,
    registry: Registry,
    *,
    train_options: dict[str, Any] | None = None,
    export_options: dict[str, Any] | None = None,
    tolerance: float = 0.02,
    device: str = "CPU",
    batch: int = 8,
    progress: Callable[..., Any] | None = None,
    rescore: bool = True,
) -> RetrainResult:
    """train -> export (gates) -> promote if not worse than the active model on the same
    validation samples (balanced accuracy, within ``tolerance``) -> rescore the pool."""
    wf = workflow()
    opts = dict(train_options or {})
    active = registry.active()
    if active is not None and "init" not in opts:
        ckpt = active.path / "checkpoint.pt"
        if ckpt.exists() and active.meta.get("arch") == opts.get("arch", active.meta.get("arch")):
            opts["init"] = ckpt
            opts.setdefault("arch", active.meta.get("arch"))
            opts.setdefault("image_size", active.meta.get("image_size"))
    checkpoint: Path = wf.train_from_store(settings, store, progress=progress is not None, **opts)
    mv, report = wf.export_from_store(settings, store, checkpoint, progress=progress is not None, **(export_options or {}))
    val_ids = [int(i) for i in report.get("val_sample_ids", mv.meta.get("val_sample_ids", []))]
    current = store.current_annotations()
    val_ids = [i for i in val_ids if i in current and current[i].label is not None]
    val_labels = [current[i].label or "" for i in val_ids]
    result = RetrainResult(version=mv.version, promoted=False, reason="", previous=active.version if active else None, export_report=report)
    holdout = mv.meta.get("holdout_predictions")
    if isinstance(holdout, dict):
        # a head refitted on its validation samples has seen them: compare its hold-out head's predictions with the
        # active model on the validation samples neither was fitted on (a version without train_sample_ids held
        # its validation samples out, and they are the same samples: the split is by content hash)
        seen = {int(i) for i in (active.meta.get("train_sample_ids") or [] if active is not None else [])}
        keep = [k for k, i in enumerate(val_ids) if i not in seen and str(i) in holdout]
        val_ids, val_labels = [val_ids[k] for k in keep], [val_labels[k] for k in keep]
    if val_ids:
        result.metrics_new = (
            label_metrics(val_labels, [str(holdout[str(i)]) for i in val_ids])
            if isinstance(holdout, dict)
            else evaluate_version(settings, store, mv, val_ids, val_labels, device)
        )
    if active is None:
        result.promoted, result.reason = True, "first model"
    elif not val_ids:
        result.promoted, result.reason = True, "no validation samples to compare on; promoted"
    else:
        result.metrics_previous = evaluate_version(settings, store, active, val_ids, val_labels, device)
        new, old = result.metrics_new["balanced_accuracy"], result.metrics_previous["balanced_accuracy"]
        if new >= old - tolerance:
            result.promoted = True
            result.reason = (
                f"balanced accuracy {new:.3f} vs active {active.version} {old:.3f} on the same {len(val_ids)} validation samples"
                + (" (neither model fitted on them; the new one's hold-out head)" if isinstance(holdout, dict) else "")
            )
        else:
            result.reason = f"kept {active.version}: new balanced accuracy {new:.3f} < active {old:.3f} - {tolerance}"
        result.reason += _split_note(active.meta, old)
    if result.promoted:
        from .engine import Engine

        # loaded before it becomes active: a version that cannot compile raises ModelLoadFailed, nothing changes
        registry.promote(mv.version, load=lambda v: Engine(v.xml, device=device, batch=1))
        if rescore:
            result.score = score_pool(settings, store, registry, device=device, batch=batch, progress=progress)
    log.info("retrain: %s", result.reason)
    return result
