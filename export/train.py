"""PyTorch training of a torchvision classifier that also returns its penultimate embedding.

Input contract (the same as the exported IR's): ``uint8 [N, H, W, 3]`` BGR images, already
resized to ``image_size`` by ``edge_al.pool.ImageCache``. Inside torch the model sees float
``[N, 3, H, W]`` RGB normalised with the ImageNet mean/std; :func:`to_tensor` does that step,
and the export embeds the same step in the IR with ``PrePostProcessor``.

A checkpoint is a plain dict (tensors, strings, numbers, lists), loadable with
``torch.load(..., weights_only=True)``::

    format, arch, state_dict, label_names, image_size, mean, std, embedding_dim, seed,
    epochs, balance, train_metrics, val_metrics, weights (where the init came from), extra
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_al.config import ARCHS  # the line side's list: one source for the CLI and training
from edge_al.errors import InvalidInput, MissingDependency
from edge_al.fsutil import atomic_write
from edge_al.lifecycle import balanced_accuracy

try:
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch import nn
except ImportError as exc:  # pragma: no cover - depends on the install
    raise MissingDependency(f"Training needs torch and torchvision ({exc}): install edge-al[train].") from exc

from .efficientnet_lite import LITE_WEIGHTS, efficientnet_lite, load_imagenet

__all__ = [
    "ARCHS",
    "CHECKPOINT_FORMAT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EmbeddingClassifier",
    "TrainResult",
    "build_model",
    "classification_metrics",
    "feature_stats",
    "fit_linear_head",
    "imagenet_weights_path",
    "load_checkpoint",
    "model_from_checkpoint",
    "predict",
    "resolve_head_alpha",
    "save_checkpoint",
    "to_tensor",
    "train",
    "train_head",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "edge-al-checkpoint/1"
BALANCE_MODES = ("sampler", "loss", "none")


class EmbeddingClassifier(nn.Module):
    """A torchvision backbone whose final Linear is split off as ``head``.

    ``forward(x float32 [N, 3, H, W] RGB normalised) -> (probs float32 [N, C] softmax,
    embedding float32 [N, D])``; the embedding is the input of the final Linear layer.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def embedding_dim(self) -> int:
        return int(self.head.in_features)

    @property
    def num_classes(self) -> int:
        return int(self.head.out_features)

    def forward_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.backbone(x)
        return self.head(emb), emb

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, emb = self.forward_logits(x)
        return torch.softmax(logits, dim=1), emb


def _split_head(net: nn.Module, arch: str) -> tuple[nn.Module, nn.Linear]:
    """Replace the final Linear of a torchvision classifier by Identity; return (backbone, old Linear)."""
    if arch.startswith("efficientnet_lite"):
        last = net._fc
        net._fc = nn.Identity()
    elif arch.startswith("mobilenet"):
        classifier: Any = net.classifier
        last = classifier[-1]
        classifier[-1] = nn.Identity()
    elif arch.startswith("resnet"):
        last = net.fc
        net.fc = nn.Identity()
    else:  # pragma: no cover - guarded by _check_arch
        raise InvalidInput(f"Unsupported arch {arch!r}.")
    assert isinstance(last, nn.Linear)
    return net, last


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise InvalidInput(f"The 'arch' parameter must be one of {', '.join(ARCHS)}. Got {arch!r} instead.")


def _weights_enum(arch: str) -> Any:
    return torchvision.models.get_model_weights(arch).DEFAULT


def imagenet_weights_path(arch: str) -> Path:
    """Where torchvision's DEFAULT ImageNet weights for ``arch`` live in the torch hub cache."""
    _check_arch(arch)
    url = _weights_enum(arch).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def build_model(arch: str, num_classes: int, weights: str = "none") -> EmbeddingClassifier:
    """A fresh :class:`EmbeddingClassifier`.

    ``weights``: ``"none"`` (random init), ``"imagenet"`` (torchvision's DEFAULT weights, read
    from the torch hub cache; no download is attempted) or a path to a checkpoint / state dict
    (warm start; a classifier head of another shape is skipped, one with other labels is
    remapped by :func:`train`).
    """
    _check_arch(arch)
    if num_classes < 2:
        raise InvalidInput(f"A classifier needs at least 2 classes. Got {num_classes} instead.")
    net: nn.Module
    if arch in LITE_WEIGHTS:
        net = efficientnet_lite(arch)
        if weights == "imagenet":
            load_imagenet(net, arch)
    else:
        net = torchvision.models.get_model(arch, weights=None)
    if weights == "imagenet" and arch not in LITE_WEIGHTS:
        path = imagenet_weights_path(arch)
        if not path.is_file():
            raise InvalidInput(
                f"ImageNet weights for {arch} are not in the torch hub cache: expected the file {path}. "
                f"There is no download here: copy {os.path.basename(path)} there (or set TORCH_HOME), "
                "or train with weights='none'."
            )
        # load_state_dict_from_url finds the cached file and does not touch the network.
        state = _weights_enum(arch).get_state_dict(progress=False, check_hash=False)
        net.load_state_dict(state)
    backbone, last = _split_head(net, arch)
    head = nn.Linear(last.in_features, num_classes)
    if weights == "imagenet":
        nn.init.normal_(head.weight, 0.0, 0.01)
        nn.init.zeros_(head.bias)
    model = EmbeddingClassifier(backbone, head)
    if weights not in ("none", "imagenet", "", None):
        _warm_start(model, arch, Path(weights), None)
    return model


def _warm_start(model: EmbeddingClassifier, arch: str, path: Path, label_names: Sequence[str] | None) -> None:
    if not path.is_file():
        raise InvalidInput(
            f"The 'weights' parameter must be 'none', 'imagenet' or a checkpoint file. Got {str(path)!r}, which does not exist."
        )
    obj = torch.load(path, map_location="cpu", weights_only=True)
    _load_init(model, arch, obj, label_names, source=str(path))


def _load_init(model: EmbeddingClassifier, arch: str, obj: Any, label_names: Sequence[str] | None, source: str) -> None:
    """Load a checkpoint dict or a state dict; skip/remap a head that does not fit."""
    old_labels: list[str] | None = None
    if isinstance(obj, dict) and "state_dict" in obj:
        if obj.get("arch") not in (None, arch):
            raise InvalidInput(f"{source} holds a {obj.get('arch')} checkpoint; cannot warm-start a {arch}.")
        old_labels = list(obj.get("label_names") or []) or None
        state = obj["state_dict"]
    elif isinstance(obj, dict):
        state = obj
    else:
        raise InvalidInput(f"{source} is not a checkpoint or a state dict.")
    if not any(k.startswith("backbone.") for k in state):
        # A plain torchvision state dict: its final Linear does not fit our head.
        own = {f"backbone.{k}" for k in model.backbone.state_dict()}
        state = {f"backbone.{k}": v for k, v in state.items() if f"backbone.{k}" in own}
    own_state = model.state_dict()
    head_w, head_b = state.get("head.weight"), state.get("head.bias")
    body = {k: v for k, v in state.items() if not k.startswith("head.")}
    mismatched = [k for k, v in body.items() if k in own_state and own_state[k].shape != v.shape]
    if mismatched:
        raise InvalidInput(f"{source} does not fit {arch}: shape mismatch at {', '.join(mismatched[:3])}.")
    missing, _unexpected = model.load_state_dict(body, strict=False)
    missing_body = [k for k in missing if not k.startswith("head.")]
    if missing_body:
        raise InvalidInput(f"{source} does not fit {arch}: missing {', '.join(missing_body[:3])} and more.")
    if head_w is None or head_b is None or head_w.shape[1] != model.head.in_features:
        log.info("warm start from %s: classifier head not loaded", source)
        return
    if label_names is not None and old_labels is not None and len(old_labels) == head_w.shape[0]:
        with torch.no_grad():
            for i, name in enumerate(label_names):
                if name in old_labels:
                    j = old_labels.index(name)
                    model.head.weight[i] = head_w[j]
                    model.head.bias[i] = head_b[j]
        log.info("warm start from %s: head remapped by label name", source)
    elif head_w.shape == model.head.weight.shape:
        model.head.load_state_dict({"weight": head_w, "bias": head_b})
    else:
        log.info("warm start from %s: head of shape %s skipped", source, tuple(head_w.shape))


def model_from_checkpoint(checkpoint: dict[str, Any]) -> EmbeddingClassifier:
    """The eval-mode model a checkpoint describes."""
    model = build_model(checkpoint["arch"], len(checkpoint["label_names"]), "none")
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


# -- tensors -----------------------------------------------------------------------------------
def to_tensor(images: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 [N, H, W, 3] BGR -> float32 [N, 3, H, W] RGB, normalised (what the IR does inside)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InvalidInput(f"Images must be uint8 [N, H, W, 3] BGR. Got {images.dtype} {images.shape} instead.")
    x = torch.from_numpy(np.ascontiguousarray(images[..., ::-1])).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


def _augment(x: torch.Tensor, g: torch.Generator, mean: torch.Tensor, std: torch.Tensor, vflip: bool) -> torch.Tensor:
    """Random flips, small random-resized crop/shift, brightness/contrast jitter on a normalised batch."""
    n = x.shape[0]
    flip_h = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip_h.view(n, 1, 1, 1), x.flip(3), x)
    if vflip:
        flip_v = torch.rand(n, generator=g) < 0.5
        x = torch.where(flip_v.view(n, 1, 1, 1), x.flip(2), x)
    # Random-resized crop: zoom in by up to 1/0.8 with a small aspect change, shift up to 10%.
    scale = torch.empty(n).uniform_(0.8, 1.0, generator=g).sqrt()
    aspect = torch.empty(n).uniform_(math.log(0.9), math.log(1.1), generator=g).exp().sqrt()
    tx = torch.empty(n).uniform_(-0.1, 0.1, generator=g)
    ty = torch.empty(n).uniform_(-0.1, 0.1, generator=g)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale * aspect
    theta[:, 1, 1] = scale / aspect
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Resample and jitter in [0, 1] pixel space (reflection at the borders), then renormalise.
    raw = x * std + mean
    raw = F.grid_sample(raw, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    brightness = torch.empty(n, 1, 1, 1).uniform_(0.8, 1.2, generator=g)
    contrast = torch.empty(n, 1, 1, 1).uniform_(0.8, 1.2, generator=g)
    mu = raw.mean(dim=(1, 2, 3), keepdim=True)
    raw = ((raw - mu) * contrast + mu) * brightness
    return (raw.clamp_(0.0, 1.0) - mean) / std


# -- metrics -----------------------------------------------------------------------------------
def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``accuracy`` and ``balanced_accuracy`` (mean recall over the classes present in y_true)."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if len(y_true) == 0:
        return {"accuracy": float("nan"), "balanced_accuracy": float("nan"), "n": 0}
    return {"accuracy": float(np.mean(y_true == y_pred)), "balanced_accuracy": balanced_accuracy(y_true, y_pred), "n": len(y_true)}


@torch.no_grad()
def predict(model: EmbeddingClassifier, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(probs float32 [N, C], embedding float32 [N, D])`` from uint8 [N, H, W, 3] BGR images."""
    model.eval()
    probs, embs = [], []
    for i in range(0, len(images), batch_size):
        p, e = model(to_tensor(images[i : i + batch_size]))
        probs.append(p.numpy())
        embs.append(e.numpy())
    if not probs:
        return np.zeros((0, model.num_classes), np.float32), np.zeros((0, model.embedding_dim), np.float32)
    return np.concatenate(probs), np.concatenate(embs)


def checkpoint_test_views(checkpoint: dict[str, Any]) -> list[str]:
    """The views a checkpoint's published IR averages (``train_head(test_time_views=True)``); [""]: the image alone."""
    return list(checkpoint.get("test_views") or [""])


def predict_checkpoint(checkpoint: dict[str, Any], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`predict` of the model a checkpoint describes, as its published IR computes it: with
    ``test_views`` (``train_head(test_time_views=True)``), the embedding is the mean over the
    flipped views of each image and the probabilities are the head's on that mean."""
    from edge_al.features import VIEWS

    model = model_from_checkpoint(checkpoint)
    views = checkpoint_test_views(checkpoint)
    if views == [""]:  # a single flipped view is applied, as export.backbone.compose_head does
        return predict(model, images)
    emb = np.mean([predict(model, np.ascontiguousarray(VIEWS[v](images)))[1] for v in views], axis=0)
    with torch.no_grad():
        probs = torch.softmax(model.head(torch.from_numpy(emb)), 1).numpy()
    return probs.astype(np.float32), emb.astype(np.float32)


# -- training ----------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """A trained model and its checkpoint dict (see the module docstring)."""

    model: EmbeddingClassifier
    checkpoint: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)

    def save_checkpoint(self, path: str | Path) -> Path:
        return save_checkpoint(self.checkpoint, path)


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Write a checkpoint atomically (temp file in the same folder, fsync, ``os.replace``)."""
    return atomic_write(path, lambda f: torch.save(checkpoint, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain values only)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"No checkpoint at {path}: train one first (edge-al train).")
    ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InvalidInput(f"{path} is not an edge-al checkpoint ({CHECKPOINT_FORMAT}).")
    return ckpt


def _validate(images: np.ndarray, labels: np.ndarray, label_names: Sequence[str], image_size: int) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise InvalidInput(
            f"The 'images' parameter must be uint8 [N, H, W, 3] BGR. Got {getattr(images, 'dtype', type(images))} "
            f"{getattr(images, 'shape', '')} instead."
        )
    if images.shape[1:3] != (image_size, image_size):
        raise InvalidInput(f"Images must already be resized to image_size={image_size}. Got {images.shape[1]}x{images.shape[2]} instead.")
    if labels.shape != (len(images),):
        raise InvalidInput(f"The 'labels' parameter must be int [{len(images)}]. Got shape {labels.shape} instead.")
    if len(label_names) < 2 or len(set(label_names)) != len(label_names):
        raise InvalidInput(f"The 'label_names' parameter must hold at least 2 distinct names. Got {list(label_names)!r}.")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(label_names)):
        raise InvalidInput(f"Labels must be class indices in [0, {len(label_names) - 1}]. Got [{labels.min()}, {labels.max()}].")


def train(
    images: np.ndarray,
    labels: np.ndarray,
    label_names: Sequence[str],
    *,
    arch: str = "mobilenet_v3_small",
    weights: str | Path = "none",
    image_size: int = 128,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    val_mask: np.ndarray | None = None,
    balance: str = "sampler",
    vflip: bool = False,
    init_state: dict[str, Any] | None = None,
    linear_probe: bool = False,
    num_threads: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``arch`` on uint8 [N, H, W, 3] BGR ``images`` with int64 [N] ``labels``.

    ``val_mask`` bool [N] marks held-out samples (not trained on; metrics in
    ``checkpoint["val_metrics"]``). ``balance``: ``"sampler"`` (class-balanced
    WeightedRandomSampler), ``"loss"`` (class-weighted cross-entropy) or ``"none"``.
    ``init_state``: a checkpoint or state dict to warm-start from (overrides ``weights``).
    ``linear_probe`` (with ``weights="imagenet"``): linear probing, then fine-tuning (Kumar et al.,
    ICLR 2022). The new linear layer starts as the workspace head (``fit_linear_head``, standardized)
    fitted on the pretrained backbone's frozen features of the training images, and BatchNorm keeps
    the pretrained statistics (its scale and shift still train), so training starts from the frozen
    head's predictions instead of a random layer's. Measured on magnetic_tile with every pool label
    (group split 0, 320 px, 2 CPU cores; ``scripts/bench_finetune.py``, docs/benchmarks/finetune.md):
    0.654 balanced accuracy after 6 epochs at lr 1e-4, the frozen head 0.637; at lr 3e-4, 0.595. Through
    the product (``simulate --reference-mode finetune``: 20% held out, 4 epochs) it scored 0.601, below
    the frozen head's 0.630, so rounds keep the head.
    Deterministic for a given ``seed`` on the same machine and thread count. ``num_threads``:
    torch intra-op threads for this call (None keeps the process setting; on a shared 2-core
    box, 1 is many times faster than 2 when other processes compete).
    """
    from tqdm.auto import tqdm

    labels = np.asarray(labels, dtype=np.int64)
    val_mask = _check_train_args(images, labels, label_names, image_size, balance, epochs, batch_size, val_mask)
    train_idx = np.flatnonzero(~val_mask)
    num_classes = len(label_names)

    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    try:
        base = str(weights) if init_state is None and str(weights) in ("none", "imagenet") else "none"
        model = build_model(arch, num_classes, base)
        if init_state is not None:
            _load_init(model, arch, init_state, label_names, source="init_state")
        elif str(weights) not in ("none", "imagenet", ""):
            _warm_start(model, arch, Path(weights), label_names)
        probe = None
        if linear_probe:
            if init_state is not None or str(weights) != "imagenet":
                raise InvalidInput("linear_probe starts from a head on the pretrained backbone's features: it needs weights='imagenet'.")
            probe = _probe_head(model, images[train_idx], labels[train_idx], num_classes, balance)
            model.head = probe  # type: ignore[assignment]
        history = _fit(
            model, images[train_idx], labels[train_idx], num_classes,
            epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
            balance=balance, vflip=vflip, progress=progress, tqdm=tqdm, freeze_bn=linear_probe,
        )  # fmt: skip
        if probe is not None:
            model.head = probe.folded()
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)

    model.eval()
    run = {"seed": int(seed), "epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr), "balance": balance,
           "weights": "init_state" if init_state is not None else str(weights), "linear_probe": bool(linear_probe)}  # fmt: skip
    checkpoint = {
        **_checkpoint(model, arch, label_names, image_size, run),
        "num_train": len(train_idx),
        "num_val": int(val_mask.sum()),
        "class_counts": [int(c) for c in np.bincount(labels[train_idx], minlength=num_classes)],
        **_fit_metrics(model, images, labels, val_mask, history),
        "created_at": time.time(),
        "torch_version": str(torch.__version__),
        "extra": {},
    }
    return TrainResult(model, checkpoint, history)


def _checkpoint(model: EmbeddingClassifier, arch: str, label_names: Sequence[str], image_size: int, run: dict[str, Any]) -> dict[str, Any]:
    """The model part of a checkpoint: weights, labels, input contract, and the run's settings."""
    return {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "label_names": list(label_names),
        "image_size": int(image_size),
        "input": "uint8 NHWC BGR",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "embedding_dim": model.embedding_dim,
        **run,
    }


def _check_train_args(
    images: np.ndarray, labels: np.ndarray, label_names: Sequence[str], image_size: int, balance: str, epochs: int,
    batch_size: int, val_mask: np.ndarray | None,
) -> np.ndarray:  # fmt: skip
    """Validate ``train``'s arguments; returns ``val_mask`` as bool [N] (all False when None)."""
    _validate(images, labels, label_names, image_size)
    if balance not in BALANCE_MODES:
        raise InvalidInput(f"The 'balance' parameter must be one of {', '.join(BALANCE_MODES)}. Got {balance!r} instead.")
    for name, value, lo in (("epochs", epochs, 1), ("batch_size", batch_size, 2)):
        if not isinstance(value, int) or value < lo:
            raise InvalidInput(f"The '{name}' parameter must be an int >= {lo}. Got {value!r} instead.")
    mask = np.zeros(len(images), dtype=bool) if val_mask is None else np.asarray(val_mask, dtype=bool)
    if mask.shape != labels.shape:
        raise InvalidInput(f"The 'val_mask' parameter must be bool [{len(labels)}]. Got shape {mask.shape} instead.")
    if int((~mask).sum()) < 2:
        raise InvalidInput(f"Training needs at least 2 training samples. Got {int((~mask).sum())}.")
    return mask


def _fit_metrics(
    model: EmbeddingClassifier, images: np.ndarray, labels: np.ndarray, val_mask: np.ndarray, history: list[dict[str, float]]
) -> dict[str, dict[str, Any]]:
    """``train_metrics`` (with the final loss) and ``val_metrics`` (``{"n": 0}`` without held-out samples)."""
    val_metrics: dict[str, Any] = {"n": 0}
    if val_mask.any():
        probs, _ = predict(model, images[val_mask])
        val_metrics = classification_metrics(labels[val_mask], probs.argmax(1))
    train_probs, _ = predict(model, images[~val_mask])
    train_metrics: dict[str, Any] = classification_metrics(labels[~val_mask], train_probs.argmax(1))
    train_metrics["final_loss"] = history[-1]["loss"] if history else float("nan")
    return {"train_metrics": train_metrics, "val_metrics": val_metrics}


def _fit(
    model: EmbeddingClassifier,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    balance: str,
    vflip: bool,
    progress: bool,
    tqdm: Any,
    freeze_bn: bool = False,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train every parameter; ``freeze_bn``: BatchNorm layers normalise with their running statistics,
    which stay as they were (their scale and shift train), instead of batch statistics re-estimated
    afterwards. ``on_epoch`` is called with each epoch's history entry as it ends (the fine-tuning
    benchmark evaluates there)."""
    n = len(images)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    g = torch.Generator().manual_seed(seed)
    if balance == "sampler":
        w = 1.0 / counts[labels]
        sampler: Any = torch.utils.data.WeightedRandomSampler(w.tolist(), num_samples=n, replacement=True, generator=g)
    else:
        sampler = torch.utils.data.RandomSampler(range(n), generator=g)
    loss_weight = None
    if balance == "loss":
        present = counts > 0
        cw = np.zeros(num_classes)
        cw[present] = n / (present.sum() * counts[present])
        loss_weight = torch.as_tensor(cw, dtype=torch.float32)
    bs = min(batch_size, n)
    # drop_last keeps every batch at bs >= 2 samples, so BatchNorm always has batch statistics.
    steps_per_epoch = max(1, n // bs)
    x_all = to_tensor(images)
    y_all = torch.as_tensor(labels)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=min(0.3, 1.0 / epochs + 0.05))
    history: list[dict[str, float]] = []
    bar = tqdm(total=total, desc="train", unit="step", disable=not progress, leave=False)
    try:
        for epoch in range(epochs):
            model.train()
            if freeze_bn:
                for m in model.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
            order = torch.as_tensor(list(sampler), dtype=torch.long)
            loss_sum, correct, seen = 0.0, 0, 0
            for step in range(steps_per_epoch):
                idx = order[step * bs : (step + 1) * bs]
                xb = _augment(x_all[idx], g, mean, std, vflip)
                yb = y_all[idx]
                logits, _ = model.forward_logits(xb)
                loss = F.cross_entropy(logits, yb, weight=loss_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == yb).sum())
                seen += len(idx)
                bar.update(1)
            history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "accuracy": correct / seen})
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.2f}")
            if on_epoch is not None:
                on_epoch(history[-1])
    finally:
        bar.close()
    if not freeze_bn:
        _recalibrate_bn(model, x_all, bs)
    return history


class _StandardizedLinear(nn.Module):
    """``Linear((x - mean) / spread)`` with fixed statistics: the workspace head as a trainable layer.
    Folded into raw-feature weights it is so steep that the backbone's first steps blow the loss up;
    standardized, its gradients are the frozen head's own."""

    mean: torch.Tensor
    spread: torch.Tensor

    def __init__(self, mean: np.ndarray, spread: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("spread", torch.as_tensor(spread, dtype=torch.float32))
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            self.linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        self.in_features, self.out_features = int(weight.shape[1]), int(weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.spread)

    @torch.no_grad()
    def folded(self) -> nn.Linear:
        """The same map as one Linear on raw features (what the checkpoint and the IR hold)."""
        out = nn.Linear(self.in_features, self.out_features)
        w = self.linear.weight / self.spread
        out.weight.copy_(w)
        out.bias.copy_(self.linear.bias - w @ self.mean)
        return out


def _probe_head(model: EmbeddingClassifier, images: np.ndarray, labels: np.ndarray, num_classes: int, balance: str) -> _StandardizedLinear:
    """The workspace head fitted on the pretrained backbone's frozen features of ``images``, standardized with their statistics."""
    _, features = predict(model, images)
    mean, spread = feature_stats(features)
    weight, bias = fit_linear_head(features, labels, num_classes, balance="none" if balance == "none" else "loss", stats=(mean, spread))
    return _StandardizedLinear(mean, spread, weight * spread[None, :], bias + weight @ mean)


@torch.no_grad()
def _recalibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Re-estimate BatchNorm running statistics as exact averages over the (unaugmented) training set.

    Short runs on small sets leave momentum-averaged running stats far from the final weights'
    statistics, and eval-mode accuracy collapses; a cumulative pass fixes that.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    n = len(x)
    for i in range(0, n - n % batch_size if n >= batch_size else n, batch_size):
        xb = x[i : i + batch_size]
        if len(xb) >= 2:
            model(xb)
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.eval()


# -- a head on frozen features ------------------------------------------------------------------
# L2 strength on the mean loss over standardized features (each feature centred and scaled by its
# spread in the pool): the equivalent of scikit-learn's C = 1 / (2 * alpha * n) on StandardScaler'd
# features. HEAD_ALPHA is the fixed strength of a caller that names none (measured on magnetic_tile,
# 5 group splits, and digits at 320 px, docs/benchmarks/features.md: standardized at 0.3 gives
# magnetic_tile 0.540 with every label and 0.392 with 200; raw features at 0.01, the head before
# it, 0.480 and 0.370). The best strength differs by data set and by label count (magnetic_tile's
# textures want 10-30 at 50 labels and 1 with every label, digits 0.1 or less at every count).
# ``choose_head_alpha`` picks it from HEAD_ALPHAS by cross-validation on the labels; measured
# through the active-learning loop it did not beat the fixed strength overall, so it is an option
# (``train_head(alpha="auto")``, ``scripts/sim_features.py --alpha auto``), not the default
# (docs/benchmarks/features.md, eleventh session).
HEAD_ALPHA = 0.3
HEAD_ALPHAS = (30.0, 10.0, 3.0, 1.0, 0.3, 0.1, 0.03)  # strongest first: each fit starts from the previous one
HEAD_CV_FOLDS = 3
HEAD_CV_MAX_ROWS = 2000
# A feature's spread is floored at this fraction of the median spread: a feature that is (nearly)
# constant over the reference samples must not be blown up by the standardization.
MIN_SPREAD = 0.05


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean f64 [D], spread f64 [D])`` of float [N, D] ``features`` for :func:`fit_linear_head`'s
    standardization (the spread floored at ``MIN_SPREAD`` x its median)."""
    x = np.asarray(features, dtype=np.float64)
    if len(x) == 0:
        raise InvalidInput("Feature statistics need at least one sample.")
    mean, spread = x.mean(0), x.std(0)
    floor = MIN_SPREAD * float(np.median(spread)) if np.any(spread > 0) else 1.0
    return mean, np.maximum(spread, max(floor, 1e-12))


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one intra-op thread for the head's fits: their tensors are small (N x D x C), so a
    second thread only adds hand-offs, and on a busy box those waits dominate. Measured on 2 vCPUs with
    two other processes busy: a 50-label ``choose_head_alpha`` took 100 s on torch's default 2
    threads and 1.3 s on one (``torch.set_num_threads`` is process-wide; restored on exit)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sample_weights(labels: np.ndarray, num_classes: int, balance: str) -> np.ndarray:
    """``N / (K * count[y])`` per sample (``class_weight="balanced"``), or ones for ``balance="none"``."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if balance == "none":
        return np.ones(len(labels))
    return len(labels) / ((counts > 0).sum() * counts[labels])


def _fit_standardized(
    z: torch.Tensor,
    labels: np.ndarray,
    num_classes: int,
    alpha: float,
    balance: str,
    max_iter: int,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight f64 [C, D], bias f64 [C])`` minimising the weighted mean cross-entropy on float64
    standardized ``z`` plus ``alpha ||W||^2`` (L-BFGS from ``init`` or zeros); absent classes' bias
    is -1e4."""
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    w_t = torch.as_tensor(_sample_weights(np.asarray(labels), num_classes, balance))
    present = np.bincount(labels, minlength=num_classes) > 0
    weight = (init[0].clone() if init else torch.zeros(num_classes, z.shape[1], dtype=torch.float64)).requires_grad_(True)
    bias = torch.zeros(num_classes, dtype=torch.float64) if init is None else torch.where(torch.as_tensor(present), init[1], 0.0)
    bias.requires_grad_(True)
    mask = torch.as_tensor(np.where(present, 0.0, -1e4))
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7, history_size=20,
                            line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = z @ weight.T + bias + mask
        loss = (F.cross_entropy(logits, y, reduction="none") * w_t).mean() + alpha * (weight * weight).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach(), (bias + mask).detach()


def _standardize(features: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    mean, spread = feature_stats(features) if stats is None else (np.asarray(stats[0], np.float64), np.asarray(stats[1], np.float64))
    return torch.as_tensor((np.asarray(features, dtype=np.float64) - mean) / spread), mean, spread


def fit_linear_head(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    alpha: float = HEAD_ALPHA,
    balance: str = "loss",
    max_iter: int = 200,
    stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on float32 [N, D] ``features``: ``(weight f32 [C, D], bias f32 [C])``.

    The features are standardized with ``stats`` (``feature_stats`` of the pool, or of ``features``
    when None); the fit minimises ``mean_i w_i CE(z_i, y_i) + alpha ||W||^2`` on the standardized
    ``z`` with full-batch L-BFGS in float64 (scikit-learn's ``LogisticRegression(C=1 / (2 alpha N))``
    after a ``StandardScaler``), and the standardization is folded into the returned weight and bias,
    so they apply to raw features (the published head is one MatMul, as before). ``balance="loss"``
    (or ``"sampler"``) weighs samples ``N / (K * count[y])`` like ``class_weight="balanced"``.
    Deterministic: no sampling. Classes without samples get a large negative bias.
    """
    z, mean, spread = _standardize(features, stats)
    with _one_thread():
        weight, bias = _fit_standardized(z, np.asarray(labels, dtype=np.int64), num_classes, alpha, balance, max_iter)
    w = weight.numpy() / spread  # W z + b = (W / s) x + (b - (W / s) m)
    b = bias.numpy() - w @ mean
    return w.astype(np.float32), b.astype(np.float32)


def cv_folds(labels: np.ndarray, folds: int = HEAD_CV_FOLDS, features: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """int64 [N] fold of each row, -1 for rows never held out.

    Rows are dealt to folds class by class, in a shuffled order (``seed``), so every fold holds a
    share of each class. With ``features`` (standardized), each row is first tied to its nearest
    row of the same class (cosine), and the connected rows go to one fold together: near-duplicates
    (frames of one part, one defect shot twice) on both sides of a fold make a weak prior look
    better than it is. On magnetic_tile with every label, folds of single rows chose alpha 0.03 (test
    balanced accuracy 0.500 over 5 group splits), tied rows chose 1 (0.543; fixed 0.3: 0.530).
    A class with fewer than 2 such units stays in every training fold (holding its only unit out
    would only test an absent class)."""
    labels = np.asarray(labels, dtype=np.int64)
    unit = np.arange(len(labels))
    if features is not None and len(labels) > 1:
        x = np.asarray(features, dtype=np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        parent = np.arange(len(labels))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = int(parent[i])
            return i

        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            if len(rows) < 2:
                continue
            sim = x[rows] @ x[rows].T
            np.fill_diagonal(sim, -np.inf)
            for i, j in zip(rows, rows[sim.argmax(1)], strict=True):
                parent[root(int(i))] = root(int(j))
        unit = np.array([root(i) for i in range(len(labels))])
    fold = np.full(len(labels), -1, dtype=np.int64)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        units = np.unique(unit[labels == c])
        if len(units) >= 2:
            for k, u in enumerate(rng.permutation(units)):
                fold[unit == u] = k % folds
    return fold


def choose_head_alpha(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    stats: tuple[np.ndarray, np.ndarray] | None = None,
    balance: str = "loss",
    alphas: Sequence[float] = HEAD_ALPHAS,
    folds: int = HEAD_CV_FOLDS,
    max_iter: int = 200,
) -> tuple[float, dict[float, float]]:
    """The L2 strength for :func:`fit_linear_head` with the lowest cross-validated, class-balanced
    log-loss on these labels: ``(alpha, {alpha: cv log-loss})``.

    ``folds``-fold cross-validation over ``cv_folds`` with near-duplicates kept together (fixed
    seed: the same labels give the same choice; above ``HEAD_CV_MAX_ROWS`` labels, on a fixed
    uniform draw of that many, whose choice errs to the strong side for the whole set). Each
    held-out row's log-probability of its label is weighted by ``1 / count`` of its class among the
    held-out rows, so every class counts alike, as in balanced accuracy. The log-loss is smooth
    where a few dozen held-out labels make accuracy jump in steps. Each fold fits ``alphas``
    strongest first, each fit starting from the previous one, and stops once the log-loss has risen
    twice running (the losses returned are those computed). Ties go to the stronger strength.
    Fewer than 2 classes with 2 units each (``cv_folds``): nothing to validate, ``(HEAD_ALPHA, {})``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    features = np.asarray(features)
    if len(labels) > HEAD_CV_MAX_ROWS:  # a uniform draw: cost bounded, classes in proportion
        keep = np.sort(np.random.default_rng(0).choice(len(labels), HEAD_CV_MAX_ROWS, replace=False))
        features, labels = features[keep], labels[keep]
    z, _, _ = _standardize(features, stats)
    fold = cv_folds(labels, folds, z.numpy())
    held = fold >= 0
    if len(np.unique(labels[held])) < 2:
        return HEAD_ALPHA, {}
    order = sorted((float(a) for a in alphas), reverse=True)
    w = 1.0 / np.bincount(labels[held], minlength=num_classes)[labels[held]]
    parts = [(fold == k, fold != k) for k in range(folds) if (fold == k).any()]
    fits: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(parts)
    losses: dict[float, float] = {}
    with _one_thread():
        for a in order:
            logp = np.zeros(len(labels))
            for i, (val, train_rows) in enumerate(parts):
                weight, bias = fits[i] = _fit_standardized(z[train_rows], labels[train_rows], num_classes, a, balance, max_iter, fits[i])
                logits = (z[val] @ weight.T + bias).numpy()
                logits -= logits.max(1, keepdims=True)
                logp[val] = (logits - np.log(np.exp(logits).sum(1, keepdims=True)))[np.arange(val.sum()), labels[val]]
            losses[a] = float(-(w * logp[held]).sum() / w.sum())
            if len(losses) >= 3 and losses[a] > list(losses.values())[-2] > min(losses.values()):
                break  # worse twice running: the loss over log(alpha) has passed its minimum
    best = min(losses, key=lambda a: (losses[a], -a))
    return best, losses


def resolve_head_alpha(
    alpha: float | str,
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    stats: tuple[np.ndarray, np.ndarray],
    balance: str = "loss",
) -> tuple[float, dict[float, float]]:
    """``train_head``'s ``alpha``: a number > 0 as given, or ``"auto"``'s cross-validated choice (with each strength's log-loss)."""
    if alpha == "auto":
        return choose_head_alpha(features, labels, num_classes, stats=stats, balance=balance)
    if isinstance(alpha, str) or isinstance(alpha, bool) or not float(alpha) > 0:
        raise InvalidInput(f"The 'alpha' parameter must be 'auto' or a number > 0. Got {alpha!r} instead.")
    return float(alpha), {}


def train_head(
    features: np.ndarray,
    labels: np.ndarray,
    label_names: Sequence[str],
    *,
    arch: str,
    image_size: int,
    backbone_id: str,
    val_mask: np.ndarray | None = None,
    alpha: float | str = HEAD_ALPHA,
    balance: str = "loss",
    seed: int = 0,
    pool_features: np.ndarray | None = None,
    views: dict[str, np.ndarray] | None = None,
    test_time_views: bool = False,
    refit: bool = True,
) -> TrainResult:
    """A classifier whose backbone is the pretrained one, unchanged, and whose head is fitted on
    its frozen float32 [N, D] ``features`` (the FP32 IR's embeddings of the labeled images).

    ``refit`` (the default): the head is first fitted on the training rows only, and that
    *hold-out head* gives ``val_metrics`` and ``val_pred`` (its predicted class of each validation
    row, in row order); then the published head is fitted again on every row, validation rows
    included. With few labels the hold-out costs more than it tells: a fifth of 50 labels, and a
    rare class's third label, are a large share of what the head can learn from. Measured with
    the workspace head on frozen features (``scripts/sim_features.py --holdout``; magnetic_tile group
    split 0, 5 seeds; docs/benchmarks/features.md): hybrid's labels at 200, 0.573 balanced accuracy
    refitted vs 0.506 held out (random's: 0.455 vs 0.427); digits at 50 labels 0.784 vs 0.726 (random's:
    0.687 vs 0.582). ``val_metrics`` stay an
    honest estimate (of a head with a fifth fewer labels, so slightly pessimistic); figures measured
    on the validation rows with the published head are not (it has seen them), which is why the
    export records ``val_metrics`` as the version's hold-out figures, and its INT8 accuracy gate
    judges both precisions by the hold-out head (``checkpoint["holdout_head"]``: weight, bias), on
    the images that head has not seen. ``refit=False``: the published head is the hold-out head (as
    before this option).

    ``alpha``: the head's L2 strength (``fit_linear_head``; default ``HEAD_ALPHA``), or ``"auto"``:
    the strength of ``HEAD_ALPHAS`` with the lowest cross-validated log-loss on the training rows
    (``choose_head_alpha``, on the images themselves, not their views); the refitted head keeps
    it. The checkpoint records ``head_alpha`` and ``head_alpha_cv`` (each strength's log-loss).
    ``"auto"`` is measured, not the default: on magnetic_tile's rounds it gained at 50-110 labels
    and lost at 170-200 (docs/benchmarks/features.md).

    ``views``: more float32 [N, D] embeddings of the same images, row for row (e.g. flipped:
    ``edge_al.features.VIEWS``); the head is fitted on the training rows of each view as well, with
    the same labels. On magnetic_tile this added about 0.03 balanced accuracy at 50-200 labels and
    nothing at 400 (docs/benchmarks/features.md). Validation uses ``features`` only, unless
    ``test_time_views``: then the published model averages the views' embeddings of each image
    (``export.backbone.compose_head``; one backbone pass per view on the line), the checkpoint's
    ``test_views`` name them, and validation scores the same mean.

    The checkpoint has the same format as :func:`train`'s (the whole model's state dict), plus
    ``mode = "head"`` and ``backbone_id``: the export composes the head onto the workspace's
    INT8 backbone instead of quantizing again. ``pool_features`` (unlabeled pool samples' features,
    labeled ones among them or not) give the standardization's statistics, together with the
    training features; without them the training features alone do.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if val_mask is None:
        val_mask = np.zeros(len(labels), dtype=bool)
    train_idx = np.flatnonzero(~val_mask)
    if len(train_idx) < 2:
        raise InvalidInput(f"Training needs at least 2 training samples. Got {len(train_idx)}.")
    if len(label_names) < 2:
        raise InvalidInput(f"The 'label_names' parameter must hold at least 2 distinct names. Got {list(label_names)!r}.")
    t = time.perf_counter()
    reference = (
        features[train_idx] if pool_features is None or not len(pool_features) else np.concatenate([pool_features, features[train_idx]])
    )
    views = views or {}
    for name, extra in views.items():
        if np.shape(extra) != np.shape(features):
            raise InvalidInput(f"The view {name!r} must have the features' shape {np.shape(features)}. Got {np.shape(extra)} instead.")
    if test_time_views and not views:
        raise InvalidInput("Test-time views need the views' features: pass 'views' (e.g. the flipped images' embeddings).")
    stats = feature_stats(reference)
    alpha, alpha_cv = resolve_head_alpha(alpha, features[train_idx], labels[train_idx], len(label_names), stats, balance)

    def fit(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fit_x = np.concatenate([features[rows], *(np.asarray(v)[rows] for v in views.values())])
        return fit_linear_head(fit_x, np.tile(labels[rows], 1 + len(views)), len(label_names), alpha=alpha, balance=balance, stats=stats)

    held_w, held_b = fit(train_idx)
    refitted = bool(refit and val_mask.any())
    fit_idx = np.arange(len(labels)) if refitted else train_idx
    weight, bias = fit(fit_idx) if refitted else (held_w, held_b)
    fit_s = time.perf_counter() - t
    model = build_model(arch, len(label_names), "imagenet")
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(weight))
        model.head.bias.copy_(torch.from_numpy(bias))
    model.eval()

    scored = np.mean([features, *(np.asarray(v) for v in views.values())], axis=0) if test_time_views else features

    def metrics(mask: np.ndarray, w: np.ndarray, b: np.ndarray) -> dict[str, Any]:
        if not mask.any():
            return {"n": 0}
        return classification_metrics(labels[mask], (scored[mask] @ w.T + b).argmax(1))

    fit_mask = np.zeros(len(labels), dtype=bool)
    fit_mask[fit_idx] = True
    val_pred = (scored[val_mask] @ held_w.T + held_b).argmax(1)
    checkpoint: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT, "arch": arch, "mode": "head", "backbone_id": backbone_id,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "label_names": list(label_names), "image_size": int(image_size), "input": "uint8 NHWC BGR",
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "embedding_dim": model.embedding_dim,
        "seed": int(seed), "epochs": 0, "batch_size": len(train_idx), "lr": 0.0, "head_alpha": alpha, "balance": balance,
        "head_alpha_cv": {f"{a:g}": round(v, 5) for a, v in alpha_cv.items()},
        "head_standardized": True, "head_stats_n": len(reference), "head_views": ["", *views],
        "test_views": ["", *views] if test_time_views else [""],
        "weights": "imagenet", "num_train": len(fit_idx), "num_val": int(val_mask.sum()), "refit": refitted,
        "class_counts": [int(k) for k in np.bincount(labels[fit_idx], minlength=len(label_names))],
        "train_metrics": {**metrics(fit_mask, weight, bias), "fit_s": round(fit_s, 3)},
        "val_metrics": metrics(val_mask, held_w, held_b), "val_pred": [int(k) for k in val_pred],
        "created_at": time.time(), "torch_version": str(torch.__version__), "extra": {},
    }  # fmt: skip
    if refitted:  # the export's INT8 accuracy gate judges both precisions with it, on images it has not seen
        checkpoint["holdout_head"] = {"weight": torch.from_numpy(np.asarray(held_w, np.float32)).clone(),
                                      "bias": torch.from_numpy(np.asarray(held_b, np.float32)).clone()}  # fmt: skip
    return TrainResult(model, checkpoint, [])
