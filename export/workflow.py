"""Glue between the store and the build side, for ``edge-al train`` / ``export`` / ``retrain``.

- :func:`val_mask_for`      a held-out split by content hash: a sample keeps its side across retrains
- :func:`train_from_store`  labeled samples -> images from the cache -> :func:`export.train.train` -> checkpoint file
- :func:`export_from_store` checkpoint -> calibration/validation/sample images from the pool -> registry version
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_al.config import AUGMENTS, DEFAULT_ARCH, PACKAGED_WEIGHTS, Settings
from edge_al.errors import InvalidInput
from edge_al.pool import ImageCache
from edge_al.registry import ModelVersion, Registry
from edge_al.storage import images_storage
from edge_al.store import Store

__all__ = [
    "MODES",
    "export_from_store",
    "resolve_mode",
    "train_from_store",
    "training_fingerprint",
    "val_mask_for",
    "workspace_backbone",
    "workspace_ref",
]

log = logging.getLogger(__name__)

_SPLIT_SALT = b"edge-al/val-split/1:"
# Pool samples (a fixed-seed draw) whose frozen features give a head's standardization statistics.
HEAD_STATS_SAMPLES = 1000
MIN_LABELED = 4


def _unit(sha: str) -> float:
    """A stable number in [0, 1) from a sample's content hash."""
    digest = hashlib.sha256(_SPLIT_SALT + sha.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def val_mask_for(sha256s: Sequence[str], labels: Sequence[Any], fraction: float = 0.2) -> np.ndarray:
    """bool [N]: which samples are held out for validation.

    A sample is held out when a hash of its content hash falls below ``fraction``, so its side
    does not change when other samples are added or its label is corrected. Per class, two
    fixes keep the split usable: a class with >= 3 samples and none held out gets its
    lowest-hash sample held out; a class with all samples held out gets its highest-hash one
    back into training (every class with >= 2 samples keeps >= 1 training sample; a class
    with 1 or 2 samples is never held out). Only these tiny-class fixes can move a sample.
    """
    if not 0.0 <= fraction < 1.0:
        raise InvalidInput(f"The 'fraction' parameter must be a float in [0, 1). Got {fraction!r} instead.")
    if len(sha256s) != len(labels):
        raise InvalidInput(f"sha256s and labels must have the same length. Got {len(sha256s)} and {len(labels)}.")
    u = np.array([_unit(str(s)) for s in sha256s], dtype=np.float64)
    mask = u < fraction
    by_class: dict[Any, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    for idx in by_class.values():
        ix = np.array(idx)
        if len(ix) <= 2:
            mask[ix] = False
            continue
        if fraction > 0 and not mask[ix].any():
            mask[ix[np.argmin(u[ix])]] = True
        if mask[ix].all():
            mask[ix[np.argmax(u[ix])]] = False
    return mask


def training_fingerprint(sha256s: Sequence[str], labels: Sequence[str]) -> str:
    """sha256 over the sorted (content hash, label) pairs: identifies a training set."""
    h = hashlib.sha256()
    for sha, lab in sorted(zip(sha256s, labels, strict=True)):
        h.update(f"{sha}\t{lab}\n".encode())
    return h.hexdigest()


def _load_images(settings: Settings, store: Store, ids: Sequence[int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images u8 [n, S, S, 3], ids int64 [n])`` of the ids whose image loads; failures are logged."""
    samples = store.samples([int(i) for i in ids])
    with ImageCache(settings.cache_dir, (size, size), images_storage(settings)) as cache:
        images, failed = cache.load_many(samples)
    if failed:
        log.warning("skipping %d sample(s) whose image could not be loaded: ids %s", len(failed),
                    ", ".join(str(samples[i].id) for i in failed[:10]))  # fmt: skip
    keep = np.ones(len(samples), dtype=bool)
    keep[failed] = False
    return images[keep], np.array([s.id for s in samples], dtype=np.int64)[keep]


def train_from_store(
    settings: Settings,
    store: Store,
    *,
    arch: str | None = DEFAULT_ARCH,
    weights: str | Path | None = None,
    image_size: int | None = None,
    epochs: int | None = None,
    seed: int | None = 0,
    batch_size: int | None = 32,
    balance: str | None = "sampler",
    lr: float | None = None,
    val_fraction: float = 0.2,
    out: str | Path | None = None,
    init: str | Path | None = None,
    mode: str | None = None,
    augment: str | None = None,
    refit: bool | None = None,
    progress: bool = True,
) -> Path:
    """Train on the store's labeled samples; returns the checkpoint path (written atomically).

    Class order: ``store.labels()`` order, restricted to labels with >= 1 labeled sample.
    ``init``: a previous checkpoint to warm-start from (overrides ``weights``; a head with
    other labels is remapped by label name). The checkpoint also holds ``val_ids``,
    ``val_labels`` (class indices), ``train_fingerprint`` and ``num_train_labels``.
    An option given as None takes its default (the CLI passes unset flags as None).

    ``mode``: ``"head"`` fits a linear head on the frozen pretrained backbone's features (cached
    per sample in the workspace's backbone folder: seconds per round, and the export reuses the
    backbone's INT8 IR); ``"finetune"`` trains the whole network for ``epochs``; ``None``/``"auto"``
    picks ``"head"`` for an architecture with packaged ImageNet weights and ``weights="imagenet"``.
    Fine-tuning packaged ImageNet weights (no ``init``) starts from the frozen head
    (``export.train.train(linear_probe=True)``) and defaults to ``FINETUNE_EPOCHS`` epochs at
    ``FINETUNE_LR``; anything else defaults to 15 epochs at 1e-3.

    ``augment``: ``"flips"`` fits a head on each labeled image mirrored, upside down and turned
    as well (their features cached like the others'), for images whose class does not depend on
    their orientation (surfaces, textures, cells; not digits or text). ``"flips+tta"``: that head,
    and the published model averages each image's four flipped views as well (test-time
    augmentation: four backbone passes an image on the line; docs/benchmarks/features.md).
    ``"none"``: off; ``None``: the workspace's ``settings.augment`` (``EDGE_AL_AUGMENT``), else off.

    ``refit`` (mode ``"head"``; None or True by default): the published head is fitted on every
    labeled sample after a head fitted without the validation samples has measured them
    (``export.train.train_head``); ``val_ids`` stay the held-out ones (the export's gates and the
    retrain's comparison use them), ``train_ids`` name every sample the published head saw.
    """
    from .train import train

    arch = arch or DEFAULT_ARCH
    weights = weights or ("imagenet" if arch in PACKAGED_WEIGHTS else "none")
    seed = 0 if seed is None else seed
    batch_size = 32 if batch_size is None else batch_size
    balance = balance or "sampler"
    size = int(image_size or settings.image_size_for(arch))
    ids, names = store.labeled()
    present = set(names)
    label_names = [lab for lab in store.labels() if lab in present]
    if len(label_names) < 2:
        raise InvalidInput(
            f"Training needs labeled samples of at least 2 classes. Got {len(ids)} labeled sample(s) of "
            f"{len(label_names)} class(es) ({', '.join(label_names) or 'none'}): annotate more samples first."
        )
    mode = resolve_mode(mode, arch, str(weights))
    augment = augment or settings.augment or "none"
    if augment not in AUGMENTS:
        raise InvalidInput(f"The 'augment' parameter must be one of {', '.join(AUGMENTS)}. Got {augment!r} instead.")
    if augment != "none" and mode != "head":
        raise InvalidInput(f"augment {augment!r} applies to a head on frozen features (mode 'head'); mode is {mode!r}.")
    if mode == "head":
        return _train_head_from_store(settings, store, ids, names, label_names, arch, size, val_fraction, out, seed, balance,
                                      augment, refit is not False)  # fmt: skip
    probe = init is None and str(weights) == "imagenet" and arch in PACKAGED_WEIGHTS
    epochs = (FINETUNE_EPOCHS if probe else 15) if epochs is None else epochs
    lr = (FINETUNE_LR if probe else 1e-3) if lr is None else lr
    images, loaded = _load_images(settings, store, ids.tolist(), size)
    name_of = dict(zip(ids.tolist(), names, strict=True))
    if len(loaded) < MIN_LABELED:
        raise InvalidInput(f"Training needs at least {MIN_LABELED} labeled samples with readable images. Got {len(loaded)}.")
    loaded_names = [name_of[int(i)] for i in loaded]
    label_names = [lab for lab in label_names if lab in set(loaded_names)]
    if len(label_names) < 2:
        raise InvalidInput("Training needs readable labeled images of at least 2 classes; the others failed to load.")
    index = {lab: k for k, lab in enumerate(label_names)}
    labels = np.array([index[n] for n in loaded_names], dtype=np.int64)
    shas = {s.id: s.sha256 for s in store.samples(loaded.tolist())}
    sha_list = [shas[int(i)] for i in loaded]
    val_mask = val_mask_for(sha_list, labels.tolist(), val_fraction)
    fingerprint = training_fingerprint(sha_list, loaded_names)

    result = train(
        images, labels, label_names, arch=arch, weights=str(init) if init else weights, image_size=size,
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, val_mask=val_mask, balance=balance, linear_probe=probe,
        progress=progress,
    )  # fmt: skip
    ck = result.checkpoint
    _record_split(ck, loaded, labels, val_mask, fingerprint, init)
    path = Path(out) if out else _checkpoint_path(settings, f"{arch}-{fingerprint[:8]}")
    result.save_checkpoint(path)
    log.info("checkpoint %s: val %s", path, ck["val_metrics"])
    return path


def _checkpoint_path(settings: Settings, name: str) -> Path:
    """A new checkpoint's path: time, ``name`` and a random suffix, so two trainings of the same labels
    in the same second (another option, another process) never write one file."""
    return settings.checkpoints_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{secrets.token_hex(3)}.pt"


MODES = ("auto", "head", "finetune")
# Fine-tuning packaged ImageNet weights from the frozen head (export.train.train(linear_probe=True)):
# on magnetic_tile with every pool label (group split 0, 320 px) 0.662 / 0.663 / 0.654 balanced
# accuracy after 2 / 4 / 6 epochs of a 6-epoch run at 1e-4; 0.595 at 3e-4 (the frozen head: 0.637).
# Each epoch of 943 images took about 3 minutes on 2 CPU cores. Through this workflow (20% held out,
# these defaults) the simulation's full-data reference scored 0.601, frozen head 0.630 (docs/benchmarks/finetune.md).
FINETUNE_EPOCHS = 4
FINETUNE_LR = 1e-4


def resolve_mode(mode: str | None, arch: str, weights: str) -> str:
    """``"head"`` or ``"finetune"`` (see :func:`train_from_store`)."""
    if mode not in (None, *MODES):
        raise InvalidInput(f"The 'mode' parameter must be one of {', '.join(MODES)}. Got {mode!r} instead.")
    if mode in (None, "auto"):
        return "head" if arch in PACKAGED_WEIGHTS and weights == "imagenet" else "finetune"
    if mode == "head" and (arch not in PACKAGED_WEIGHTS or weights != "imagenet"):
        raise InvalidInput(
            f"mode 'head' trains on a pretrained backbone's frozen features: it needs --weights imagenet and an "
            f"architecture with packaged weights ({', '.join(PACKAGED_WEIGHTS)}). Got arch {arch!r}, weights {weights!r}."
        )
    return mode


def _pool_draw(store: Store, n: int) -> np.ndarray:
    """int64 [min(n, N)]: pool sample ids drawn without replacement with a fixed seed (the same draw
    for the same pool: the backbone's INT8 calibration set, a head's standardization sample)."""
    pool = store.sample_ids()
    return np.random.default_rng(0).choice(pool, size=min(n, len(pool)), replace=False) if len(pool) else pool


def workspace_backbone(
    settings: Settings, store: Store, arch: str, size: int, *, calibration_size: int = 300, progress: bool = False
) -> Any:
    """The workspace's pretrained backbone for ``(arch, size)`` (``edge_al.features.Backbone``), built on first use
    with INT8 calibration on ``calibration_size`` pool images drawn with a fixed seed."""
    from edge_al.features import Backbone, backbone_dir

    from .backbone import ensure_backbone

    folder = backbone_dir(settings, arch, size)
    if (folder / "meta.json").is_file():
        return Backbone.open(folder)
    calibration, _ = _load_images(settings, store, _pool_draw(store, calibration_size).tolist(), size)
    return ensure_backbone(settings, arch, size, calibration, progress=progress)


def _train_head_from_store(
    settings: Settings, store: Store, ids: np.ndarray, names: Sequence[str], label_names: list[str], arch: str, size: int,
    val_fraction: float, out: str | Path | None, seed: int, balance: str, augment: str = "none", refit: bool = True,
) -> Path:  # fmt: skip
    from edge_al.features import VIEWS, FeatureCache

    from .train import train_head

    backbone = workspace_backbone(settings, store, arch, size)
    with FeatureCache(settings, backbone) as cache:
        feats, loaded = cache.get(store, ids)
        pool_feats, _ = cache.get(store, _pool_draw(store, HEAD_STATS_SAMPLES))  # the head's standardization (cached)
    views: dict[str, np.ndarray] = {}
    for view in [v for v in VIEWS if v] if augment in ("flips", "flips+tta") else []:
        with FeatureCache(settings, backbone, view=view) as cache:
            views[view], got = cache.get(store, loaded)
        if not np.array_equal(got, loaded):  # an image that loaded a moment ago and not now: train without views
            log.warning("flipped views incomplete (%d of %d images); training without them", len(got), len(loaded))
            views = {}
            break
    if len(loaded) < len(ids):
        log.warning("skipping %d labeled sample(s) whose image could not be loaded", len(ids) - len(loaded))
    name_of = dict(zip(ids.tolist(), names, strict=True))
    loaded_names = [name_of[int(i)] for i in loaded]
    label_names = [lab for lab in label_names if lab in set(loaded_names)]
    if len(loaded) < MIN_LABELED or len(label_names) < 2:
        raise InvalidInput(
            f"Training needs at least {MIN_LABELED} readable labeled images of at least 2 classes. "
            f"Got {len(loaded)} of {len(label_names)} class(es)."
        )
    index = {lab: k for k, lab in enumerate(label_names)}
    labels = np.array([index[n] for n in loaded_names], dtype=np.int64)
    shas = {s.id: s.sha256 for s in store.samples(loaded.tolist())}
    sha_list = [shas[int(i)] for i in loaded]
    val_mask = val_mask_for(sha_list, labels.tolist(), val_fraction)
    result = train_head(feats, labels, label_names, arch=arch, image_size=size, backbone_id=backbone.id,
                        val_mask=val_mask, seed=seed, balance="none" if balance == "none" else "loss", pool_features=pool_feats,
                        views=views, test_time_views=augment == "flips+tta" and bool(views), refit=refit)  # fmt: skip
    ck = result.checkpoint
    _record_split(ck, loaded, labels, val_mask, training_fingerprint(sha_list, loaded_names), None)
    path = Path(out) if out else _checkpoint_path(settings, f"{arch}-head-{ck['train_fingerprint'][:8]}")
    result.save_checkpoint(path)
    log.info("checkpoint %s (head on frozen %s): val %s", path, backbone.id, ck["val_metrics"])
    return path


def _holdout_meta(ck: dict[str, Any]) -> dict[str, Any]:
    """A refitted head's version meta: ``holdout_predictions`` (validation sample id -> the class the
    hold-out head predicted), so a retrain can compare it with the active model on samples neither saw."""
    if not ck.get("refit"):
        return {}
    names = list(ck["label_names"])
    return {"holdout_predictions": {str(int(i)): names[int(k)] for i, k in zip(ck["val_ids"], ck["val_pred"], strict=True)}}


def _record_split(ck: dict[str, Any], loaded: np.ndarray, labels: np.ndarray, val_mask: np.ndarray, fingerprint: str,
                  init: str | Path | None) -> None:  # fmt: skip
    ck["val_ids"] = [int(i) for i in loaded[val_mask]]
    ck["val_labels"] = [int(v) for v in labels[val_mask]]
    ck["train_ids"] = [int(i) for i in (loaded if ck.get("refit") else loaded[~val_mask])]  # what the published model saw
    ck["train_fingerprint"] = fingerprint
    ck["num_train_labels"] = len(loaded)
    ck["init"] = str(init) if init else None


def _checkpoint_backbone(settings: Settings, ck: dict[str, Any]) -> Any:
    """The workspace backbone a head-only checkpoint was trained on; None for a fine-tuned one."""
    if ck.get("mode") != "head":
        return None
    from edge_al.features import Backbone, backbone_dir

    folder = backbone_dir(settings, str(ck["arch"]), int(ck["image_size"]))
    backbone = Backbone.open(folder)
    if backbone.id != ck.get("backbone_id"):
        raise InvalidInput(
            f"The checkpoint's head was trained on backbone {ck.get('backbone_id')}, but this workspace's "
            f"{folder.name} backbone is {backbone.id}: retrain it here (edge-al train)."
        )
    return backbone


def workspace_ref(settings: Settings, path: str | Path) -> str:
    """``path`` as the registry records it: relative to the workspace when inside it
    (``checkpoints/...``), else its file name; never a folder only this box knows."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(settings.home.resolve()).as_posix()
    except ValueError:
        return resolved.name


def export_from_store(
    settings: Settings,
    store: Store,
    checkpoint_path: str | Path,
    *,
    max_drop: float = 0.01,
    min_agreement: float = 0.99,
    calibration_size: int = 300,
    sample_size: int = 200,
    batch: int = 8,
    seed: int = 0,
    precision_fallback: str = "fp32",
    registry: Registry | None = None,
    exporter: str = "dynamo",
    accuracy_control: bool = True,
    progress: bool = True,
) -> tuple[ModelVersion, dict[str, Any]]:
    """Export a checkpoint into the registry (not promoted); returns ``(version, gate report)``.

    Calibration (``calibration_size``) and parity/agreement samples (``sample_size``) are drawn,
    seeded, from the whole pool, labeled or not; validation uses the checkpoint's held-out ids.
    """
    from .convert import export_checkpoint
    from .train import load_checkpoint

    ck = load_checkpoint(checkpoint_path)
    size = int(ck["image_size"])
    pool = store.sample_ids()
    if len(pool) == 0:
        raise InvalidInput("The pool is empty: ingest images before exporting (calibration needs them).")
    rng = np.random.default_rng(seed)
    cal_ids = rng.choice(pool, size=min(calibration_size, len(pool)), replace=False)
    sample_ids = rng.choice(pool, size=min(sample_size, len(pool)), replace=False)
    samples, _ = _load_images(settings, store, sample_ids.tolist(), size)
    backbone = _checkpoint_backbone(settings, ck)
    # a head on the workspace's backbone reuses its INT8 IR: nothing to calibrate
    calibration = samples if backbone is not None else _load_images(settings, store, cal_ids.tolist(), size)[0]
    val_ids = [int(i) for i in ck.get("val_ids", [])]
    val_label_of = dict(zip(val_ids, ck.get("val_labels", []), strict=True))
    val_images, val_loaded = (
        _load_images(settings, store, val_ids, size) if val_ids else (np.zeros((0, size, size, 3), np.uint8), np.zeros(0, np.int64))
    )
    val_labels = np.array([val_label_of[int(i)] for i in val_loaded], dtype=np.int64)
    if len(calibration) == 0 or len(samples) == 0:
        raise InvalidInput("No pool image could be loaded for calibration: check the sample paths.")
    mv, report = export_checkpoint(
        ck,
        registry or Registry(settings.registry_dir),
        calibration_images=calibration,
        val_images=val_images,
        val_labels=val_labels,
        sample_images=samples,
        max_drop=max_drop,
        min_agreement=min_agreement,
        train_fingerprint=str(ck.get("train_fingerprint", "")),
        num_train_labels=int(ck.get("num_train_labels", 0)),
        extra_meta={
            "checkpoint": workspace_ref(settings, checkpoint_path),
            "val_sample_ids": [int(i) for i in val_loaded],
            "train_sample_ids": [int(i) for i in ck.get("train_ids", [])],
            **_holdout_meta(ck),
        },
        precision_fallback=precision_fallback,
        exporter=exporter,
        accuracy_control=accuracy_control,
        batch=batch,
        progress=progress,
        backbone=backbone,
    )
    report["val_sample_ids"] = [int(i) for i in val_loaded]
    return mv, report
