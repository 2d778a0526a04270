"""torch -> ONNX -> OpenVINO IR (+ preprocessing, metadata) -> NNCF INT8 -> gates -> registry.

:func:`export_checkpoint` builds one model version in a registry staging folder and publishes
it only when the gates allow it::

    checkpoint ──torch.onnx.export──> model.onnx ──convert_model + PrePostProcessor──> reference IR (FP32)
        gate 1  parity: torch vs ONNX Runtime, torch vs FP32 IR (compiled with INFERENCE_PRECISION_HINT=f32)
                 -> fails: GateFailed, nothing published
    reference IR ──nncf.quantize (calibration: pool images)──> INT8 IR
        gate 2  INT8 top-1 agrees with the FP32 IR on >= min_agreement of sample_images
        gate 3  INT8 val accuracy >= FP32 val accuracy - max_drop
                 -> fails: nncf.quantize_with_accuracy_control, then the gates again
                 -> still fails: FP32 (or FP16) IR published as model.xml, ExportGateWarning, report["fallback"]

The IR contract (what the line engine gets): one input ``image`` u8 ``[N, H, W, 3]`` BGR
(batch 1 on disk, fixed H and W; ``model.reshape`` to a static ``[B, H, W, 3]`` before
compiling: an INT8 IR compiled with a dynamic batch segfaults with openvino 2026.4.1), outputs ``probs`` f32
``[N, C]`` (softmax) and ``embedding`` f32 ``[N, D]``. ``rt_info["model_info"]`` values are all
strings; structured ones (``labels``, ``input_size``, ``normalization``, ``input``,
``quantization``, ``metrics``, ``runtime_config``) are JSON text, because OpenVINO serialises a
list of strings space-joined and labels may contain spaces.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import time
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_al.engine import Engine, read_ir
from edge_al.errors import GateFailed, InvalidInput, MissingDependency
from edge_al.features import Backbone
from edge_al.fsutil import atomic_write
from edge_al.registry import ModelVersion, Registry, atomic_write_json

from .train import (
    EmbeddingClassifier,
    checkpoint_test_views,
    model_from_checkpoint,
    predict,
    predict_checkpoint,
    save_checkpoint,
    to_tensor,
)

try:
    import nncf
    import openvino as ov
    import torch
    from openvino.preprocess import ColorFormat, PrePostProcessor
except ImportError as exc:  # pragma: no cover - depends on the install
    raise MissingDependency(f"Export needs openvino, nncf and torch ({exc}): install edge-al[train].") from exc

from .gates import holdout_predictions, int8_gates, int8_line, parity_gate, val_metrics, val_outputs
from .quantize import nncf_output, quantization_settings, quantize_int8, quantize_with_accuracy_control
from .quantize import quiet as _quiet

__all__ = [
    "F32_CONFIG",
    "ExportGateWarning",
    "build_reference_ir",
    "export_checkpoint",
    "export_onnx",
]

log = logging.getLogger(__name__)

F32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
RESIZE_MODE = "stretch"
INTERPOLATION = "cv2.INTER_AREA when shrinking, cv2.INTER_LINEAR when enlarging"
PRECISIONS = ("fp32", "fp16")
# torch runs the 320 px backbone at about 20 img/s on 2 cores (16 images were 0.75 s of a 2.4 s export):
# a head-only export checks a few; the backbone itself passed parity when it was built.
HEAD_PARITY_IMAGES = 4


class ExportGateWarning(UserWarning):
    """An INT8 gate failed and a float IR was published instead."""


# -- torch -> ONNX -----------------------------------------------------------------------------
def export_onnx(model: EmbeddingClassifier, image_size: int, path: Path, exporter: str = "dynamo") -> str:
    """Export ``model`` to ONNX with a dynamic batch dimension; returns the exporter that worked.

    ``exporter``: ``"dynamo"`` (torch.export based, the default since torch 2.9) or
    ``"torchscript"``; a failing dynamo export falls back to torchscript. Either result is
    checked numerically by the parity gate.
    """
    model = model.eval()
    dummy = torch.zeros(2, 3, image_size, image_size)
    order = ["dynamo", "torchscript"] if exporter == "dynamo" else ["torchscript"]
    if exporter not in ("dynamo", "torchscript"):
        raise InvalidInput(f"The 'exporter' parameter must be 'dynamo' or 'torchscript'. Got {exporter!r} instead.")
    last: Exception | None = None
    for name in order:
        try:
            with _quiet(), torch.no_grad():
                if name == "dynamo":
                    torch.onnx.export(
                        model, (dummy,), str(path), input_names=["image"], output_names=["probs", "embedding"],
                        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), dynamo=True,
                        verbose=False, opset_version=18,
                    )  # fmt: skip
                else:
                    torch.onnx.export(
                        model, (dummy,), str(path), input_names=["image"], output_names=["probs", "embedding"],
                        dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}, "embedding": {0: "batch"}},
                        dynamo=False, opset_version=17,
                    )  # fmt: skip
            return name
        except Exception as exc:
            log.warning("ONNX export with the %s exporter failed: %s", name, exc)
            last = exc
    raise RuntimeError(f"ONNX export failed with every exporter: {last}") from last


def _onnx_predict(path: Path, images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = to_tensor(images, mean, std).numpy()
    probs, emb = sess.run(["probs", "embedding"], {sess.get_inputs()[0].name: x})
    return np.asarray(probs), np.asarray(emb)


# -- ONNX -> IR --------------------------------------------------------------------------------
def build_reference_ir(onnx_path: Path, image_size: int, mean: Sequence[float], std: Sequence[float]) -> ov.Model:
    """The FP32 IR with preprocessing embedded: u8 NHWC BGR in, ``probs`` and ``embedding`` out."""
    with _quiet():
        model = ov.convert_model(str(onnx_path))
    if len(model.inputs) != 1 or len(model.outputs) != 2:
        raise GateFailed(f"The converted model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; expected 1 and 2.")
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(ColorFormat.BGR)
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_color(ColorFormat.RGB).convert_element_type(ov.Type.f32).mean([255.0 * m for m in mean]).scale(
        [255.0 * s for s in std]
    )
    model = ppp.build()
    model.input(0).get_tensor().set_names({"image"})
    model.output(0).get_tensor().set_names({"probs"})
    model.output(1).get_tensor().set_names({"embedding"})
    shape = model.input(0).get_partial_shape()
    if shape.rank.get_length() != 4 or shape[1] != image_size or shape[2] != image_size or shape[3] != 3:
        raise GateFailed(f"The IR input is {shape}; expected [?, {image_size}, {image_size}, 3].")
    # Batch 1 on disk: the line reshapes to its own static batch (edge_al.engine.Engine).
    model.reshape({0: ov.PartialShape([1, image_size, image_size, 3])})
    return model


def _set_model_info(model: ov.Model, info: dict[str, Any]) -> None:
    for key, value in info.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        model.set_rt_info(text, ["model_info", key])


def _check_images(name: str, images: np.ndarray, size: int, allow_empty: bool = False) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise InvalidInput(f"The '{name}' parameter must be uint8 [N, {size}, {size}, 3] BGR. Got {images.dtype} {images.shape} instead.")
    if not allow_empty and len(images) == 0:
        raise InvalidInput(f"The '{name}' parameter must hold at least one image. Got none.")
    return images


def _say(progress: bool, text: str) -> None:
    """A progress line, through one channel: printed on stderr for a person watching (``progress``)
    unless logging already shows INFO records (``-v``, a server's log), else logged; never both."""
    if progress and not log.isEnabledFor(logging.INFO):
        print(text, file=sys.stderr, flush=True)
    else:
        log.info(text)


# -- the whole export --------------------------------------------------------------------------
@dataclass
class _Build:
    """One export in progress: the checkpoint, where it is staged, its images and options, and the
    report it accumulates. Images are uint8 [N, S, S, 3] BGR; ``val_labels`` int [M]."""

    checkpoint: dict[str, Any]
    registry: Registry
    staging: Path
    version: str
    calibration_images: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    sample_images: np.ndarray
    max_drop: float
    parity_tol: float
    min_agreement: float
    train_fingerprint: str
    num_train_labels: int
    extra_meta: dict[str, Any]
    precision_fallback: str
    int8: bool
    exporter: str
    accuracy_control: bool
    batch: int
    progress: bool
    backbone: Backbone | None
    started: float = field(default_factory=time.time)
    timings: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.checkpoint["image_size"])

    @property
    def labels(self) -> list[str]:
        return list(self.checkpoint["label_names"])

    @property
    def mean(self) -> list[float]:
        return list(self.checkpoint["mean"])

    @property
    def std(self) -> list[float]:
        return list(self.checkpoint["std"])

    def engine(self, model: ov.Model, f32: bool = False) -> Engine:
        """``model`` compiled at this export's static batch (at f32 when asked), through the line's engine."""
        return Engine(model, batch=self.batch, hint="LATENCY", precision="f32" if f32 else None)

    def say(self, text: str) -> None:
        _say(self.progress, f"[{self.version}] {text}")


@dataclass
class _Reference:
    """The FP32 reference IR, compiled at f32, and its outputs on the sample images."""

    model: ov.Model
    f32: Engine
    probs: np.ndarray
    emb: np.ndarray
    val_pred: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # top-1 on the validation images
    val_judged: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # the same by the accuracy gate's judge
    holdout: tuple[np.ndarray, np.ndarray] | None = None  # the accuracy gate's judge when not the published head


@dataclass
class _Choice:
    """What the INT8 step chose to publish: the model, its precision, its metrics, its runtime config."""

    model: ov.Model
    precision: str
    metrics: dict[str, Any]
    runtime_config: dict[str, str]
    qsettings: dict[str, Any]


def export_checkpoint(
    checkpoint: dict[str, Any],
    registry: Registry,
    *,
    calibration_images: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    sample_images: np.ndarray,
    max_drop: float = 0.01,
    parity_tol: float = 1e-3,
    min_agreement: float = 0.99,
    train_fingerprint: str = "",
    num_train_labels: int = 0,
    extra_meta: dict[str, Any] | None = None,
    precision_fallback: str = "fp32",
    int8: bool = True,
    exporter: str = "dynamo",
    accuracy_control: bool = True,
    batch: int = 8,
    progress: bool = True,
    backbone: Backbone | None = None,
) -> tuple[ModelVersion, dict[str, Any]]:
    """Export, gate and publish one checkpoint; returns the published version and the gate report.

    Images are uint8 [N, S, S, 3] BGR at the checkpoint's ``image_size``; ``val_labels`` int
    [M] class indices for ``val_images``. ``parity_tol`` <= 0 or ``max_drop`` < 0 make gate 1 or
    gate 3 fail on purpose (tests). Raises ``GateFailed`` when parity fails (nothing published);
    INT8 gate failures first retry with NNCF accuracy control (``accuracy_control``; it costs
    a minute or more on 2 cores: the simulation turns it off), then fall back to
    ``precision_fallback`` with an :class:`ExportGateWarning`.
    """
    if precision_fallback not in PRECISIONS:
        raise InvalidInput(
            f"The 'precision_fallback' parameter must be one of {', '.join(PRECISIONS)}. Got {precision_fallback!r} instead."
        )
    if not isinstance(batch, int) or batch < 1:
        raise InvalidInput(f"The 'batch' parameter must be an int >= 1. Got {batch!r} instead.")
    size = int(checkpoint["image_size"])
    calibration_images = _check_images("calibration_images", calibration_images, size)
    sample_images = _check_images("sample_images", sample_images, size)
    val_images = _check_images("val_images", val_images, size, allow_empty=True)
    val_labels = np.asarray(val_labels, dtype=np.int64)
    if val_labels.shape != (len(val_images),):
        raise InvalidInput(f"The 'val_labels' parameter must be int [{len(val_images)}]. Got shape {val_labels.shape} instead.")
    nncf.set_log_level(logging.WARNING if progress else logging.ERROR)

    version = registry.reserve()
    staging = registry.staging()
    build = _Build(
        checkpoint, registry, staging, version, calibration_images, val_images, val_labels, sample_images,
        max_drop=max_drop, parity_tol=parity_tol, min_agreement=min_agreement, train_fingerprint=train_fingerprint,
        num_train_labels=num_train_labels, extra_meta=extra_meta or {}, precision_fallback=precision_fallback, int8=int8,
        exporter=exporter, accuracy_control=accuracy_control, batch=batch, progress=progress, backbone=backbone,
    )  # fmt: skip
    try:
        mv, report = _build_and_publish(build)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if not (registry.root / version).exists():
            (registry.root / f".reserved-{version}").unlink(missing_ok=True)
        raise
    return mv, report


def _build_and_publish(b: _Build) -> tuple[ModelVersion, dict[str, Any]]:
    b.report.update({"version": b.version, "arch": b.checkpoint["arch"], "image_size": b.size, "labels": b.labels,
                     "gates": {}, "fallback": False, "warnings": []})  # fmt: skip
    ref = _head_reference(b) if b.backbone is not None else _onnx_reference(b)  # 1-2. the FP32 reference IR, checked against torch
    _check_parity(b)
    val_probs, val_emb = val_outputs(ref.f32, b.val_images)
    ref.val_pred = val_probs.argmax(1).astype(np.int64)
    ref.holdout = _holdout_head(b.checkpoint)
    ref.val_judged = ref.val_pred if ref.holdout is None or not len(b.val_images) else holdout_predictions(ref.holdout, val_emb)
    fp32_val = val_metrics(ref.f32, b.val_images, b.val_labels, ref.val_pred)
    b.report["metrics"] = {"torch": b.checkpoint.get("val_metrics", {}), "fp32": fp32_val}
    choice = _choose_precision(b, ref, fp32_val)  # 3. INT8 and its gates, or the fallback
    b.report["precision"] = choice.precision
    b.report["metrics"]["published"] = choice.metrics
    created_at = _save_irs(b, ref, choice, fp32_val)  # 4. metadata into the IRs, files, report, publish
    if b.backbone is not None:  # the head alone: a later score rescores stored embeddings with it
        _save_head(b)
    save_checkpoint(b.checkpoint, b.staging / "checkpoint.pt")
    b.timings["total_s"] = time.time() - b.started
    b.report["timings"] = b.timings
    atomic_write_json(b.staging / "report.json", b.report)
    mv = b.registry.publish(b.staging, _version_meta(b, choice, fp32_val, int(ref.emb.shape[1]), created_at), b.version)
    b.say(f"published {choice.precision} model at {mv.path} in {b.timings['total_s']:.1f}s")
    return mv, b.report


def _check_parity(b: _Build) -> None:
    """Say each parity gate's figures; ``GateFailed`` (nothing published) when one failed."""
    gated = [g for g in ("onnx_parity", "ir_parity") if g in b.report["gates"]]
    failed = [g for g in gated if not b.report["gates"][g]["passed"]]
    for g in gated:
        gate = b.report["gates"][g]
        b.say(f"gate {g}: {'pass' if gate['passed'] else 'FAIL'} "
              f"max|dp|={gate['max_abs_prob_diff']:.2e} emb rel={gate['max_rel_embedding_diff']:.2e} (tol {b.parity_tol:g})")  # fmt: skip
    if failed:
        raise GateFailed(
            f"Export parity gate failed ({', '.join(failed)}): "
            + "; ".join(f"{g} max abs probability diff {b.report['gates'][g]['max_abs_prob_diff']:.3g}, "
                        f"embedding rel diff {b.report['gates'][g]['max_rel_embedding_diff']:.3g}" for g in failed)
            + f" (tol {b.parity_tol:g}). Nothing was published; the exporter output is not trustworthy."
        )  # fmt: skip


def _head_reference(b: _Build) -> _Reference:
    """A head-only checkpoint: its head composed onto the workspace's FP32 backbone IR (the backbone
    passed torch -> ONNX -> IR parity when it was built); torch vs IR on the first sample images.

    The backbone is frozen, so its embeddings of the gate's sample images are the same every round:
    ``_sample_outputs`` keeps them per process and applies each new head to them once the composed
    IR reproduces them on the parity probe (about 1 s of a 3 s export at 320 px on 2 cores at f32).
    """
    from .backbone import compose_head, head_arrays

    assert b.backbone is not None
    t = time.time()
    weight, bias = head_arrays(b.checkpoint["state_dict"])
    reference = compose_head(read_ir(b.backbone.fp32_xml), weight, bias, checkpoint_test_views(b.checkpoint))
    ref_f32 = b.engine(reference, f32=True)
    ir_probs, ir_emb = _sample_outputs(b, ref_f32, "fp32", weight, bias)
    probe = slice(0, min(HEAD_PARITY_IMAGES, len(b.sample_images)))
    torch_probs, torch_emb = predict_checkpoint(b.checkpoint, b.sample_images[probe])
    b.report["gates"]["ir_parity"] = parity_gate("ir_parity", torch_probs, torch_emb, ir_probs[probe], ir_emb[probe], b.parity_tol)
    b.report["exporter"] = f"backbone {b.backbone.id} ({b.backbone.meta.get('exporter')}) + head"
    b.report["backbone"] = {"id": b.backbone.id, "parity": b.backbone.meta.get("parity")}
    b.timings["ir_s"] = time.time() - t
    return _Reference(reference, ref_f32, ir_probs, ir_emb)


def _sample_outputs(b: _Build, engine: Engine, backbone_ir: str, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(probs, embeddings)`` of a head composed onto the workspace backbone's ``backbone_ir`` ("fp32"
    or "int8") on the gate's sample images.

    The engine always runs the first ``HEAD_PARITY_IMAGES`` images. When embeddings of the same
    images through the same backbone IR are kept from an earlier export (of this process:
    ``_SAMPLE_EMBEDDINGS``, keyed by backbone id, IR, views and the images' bytes; or of another, in
    the backbone's folder: ``_KEPT_FILE``, so each ``edge-al train`` and each retrain job does not
    embed the same 200 images again) and the engine reproduces them there, the rest are the kept
    embeddings with this head applied (the composed IR's MatMul + Add + Softmax, in float64);
    otherwise the engine runs them all and they are kept. ``report["sample_embeddings"][backbone_ir]``
    says which.
    """
    from edge_al.scoring import head_probs

    assert b.backbone is not None
    probe = slice(0, min(HEAD_PARITY_IMAGES, len(b.sample_images)))
    digest = hashlib.sha256(np.ascontiguousarray(b.sample_images).tobytes()).hexdigest()
    views = ",".join(checkpoint_test_views(b.checkpoint))
    key = (f"{b.backbone.id}|{backbone_ir}|{views}", digest)
    kept_file = b.backbone.path / _KEPT_FILE.format(ir=backbone_ir, views=views.replace(",", "-") or "plain")
    kept = _SAMPLE_EMBEDDINGS.get(key)
    if kept is None:
        kept = _read_kept(kept_file, digest, len(b.sample_images))
    probe_probs, probe_emb = engine.infer(b.sample_images[probe])
    scale = max(1.0, float(np.max(np.abs(probe_emb))))
    reused = kept is not None and float(np.max(np.abs(kept[probe] - probe_emb))) <= b.parity_tol * scale
    if reused:
        assert kept is not None
        rest_emb = kept[probe.stop :]
        rest_probs = head_probs(weight, bias, rest_emb)
    else:
        rest_probs, rest_emb = engine.infer(b.sample_images[probe.stop :])
    probs, emb = np.concatenate([probe_probs, rest_probs]), np.concatenate([probe_emb, rest_emb])
    for other in [k for k in _SAMPLE_EMBEDDINGS if (k[0] == key[0] or k[1] != digest) and k != key]:
        del _SAMPLE_EMBEDDINGS[other]  # one set of samples at a time: 200 x 1,280 floats per IR
    _SAMPLE_EMBEDDINGS[key] = emb
    if not reused:
        _write_kept(kept_file, digest, emb)
    b.report.setdefault("sample_embeddings", {})[backbone_ir] = "kept from an earlier export" if reused else "computed"
    return probs, emb


# (backbone id | backbone IR | test-time views, sha256 of the sample images) -> their embeddings: see _sample_outputs
_SAMPLE_EMBEDDINGS: dict[tuple[str, str], np.ndarray] = {}
# the same, in the backbone's folder (one file per IR and views: the last sample set written)
_KEPT_FILE = "gate-samples-{ir}-{views}.npz"


def _read_kept(path: Path, digest: str, n: int) -> np.ndarray | None:
    """The embeddings kept in ``path`` when they are of the images with this ``digest``, else None
    (also for a file that cannot be read: it is only ever a shortcut, and the probe checks it)."""
    try:
        with np.load(path, allow_pickle=False) as kept:
            if str(kept["digest"]) != digest or kept["embeddings"].shape[0] != n:
                return None
            return np.asarray(kept["embeddings"], np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _write_kept(path: Path, digest: str, embeddings: np.ndarray) -> None:
    try:
        atomic_write(path, lambda f: np.savez(f, digest=np.array(digest), embeddings=embeddings.astype(np.float32)))
    except OSError as exc:  # a read-only workspace: the next export computes them again
        log.warning("could not keep the gate samples' embeddings in %s: %s", path.parent, exc)


def _onnx_reference(b: _Build) -> _Reference:
    """torch -> ONNX (parity vs torch) -> FP32 IR with preprocessing (parity vs torch at f32)."""
    t = time.time()
    model = model_from_checkpoint(b.checkpoint)
    torch_probs, torch_emb = predict(model, b.sample_images)
    onnx_dir = b.staging / "onnx"
    onnx_dir.mkdir()
    onnx_path = onnx_dir / "model.onnx"
    b.report["exporter"] = export_onnx(model, b.size, onnx_path, b.exporter)
    onnx_probs, onnx_emb = _onnx_predict(onnx_path, b.sample_images, b.mean, b.std)
    b.report["gates"]["onnx_parity"] = parity_gate("onnx_parity", torch_probs, torch_emb, onnx_probs, onnx_emb, b.parity_tol)
    b.timings["onnx_s"] = time.time() - t

    # FP32 IR with preprocessing; parity at f32 (this CPU would otherwise run bf16)
    t = time.time()
    reference = build_reference_ir(onnx_path, b.size, b.mean, b.std)
    shutil.rmtree(onnx_dir)
    ref_f32 = b.engine(reference, f32=True)
    ir_probs, ir_emb = ref_f32.infer(b.sample_images)
    b.report["gates"]["ir_parity"] = parity_gate("ir_parity", torch_probs, torch_emb, ir_probs, ir_emb, b.parity_tol)
    b.timings["ir_s"] = time.time() - t
    return _Reference(reference, ref_f32, ir_probs, ir_emb)


def _choose_precision(b: _Build, ref: _Reference, fp32_val: dict[str, Any]) -> _Choice:
    """INT8 when every INT8 gate passes (after accuracy control if the first try fails), else the fallback."""
    qsettings = quantization_settings(b.checkpoint["arch"], min(300, len(b.calibration_images)))
    if b.backbone is not None:
        qsettings = {**b.backbone.meta.get("quantization", {}), "backbone": b.backbone.id, "head": "fp32"}
    attempts: list[dict[str, Any]] = []
    if b.int8:
        passed = _int8_attempts(b, ref, qsettings, attempts)
        b.report["int8_attempts"] = attempts
        b.report["quantization"] = qsettings
        if passed is not None:
            return _Choice(passed[0], "int8", passed[1], {}, qsettings)
    b.report.setdefault("int8_attempts", attempts)
    b.report["quantization"] = qsettings
    precision = b.precision_fallback
    if b.int8:
        b.report["fallback"] = True
        gates = b.report["gates"]
        msg = (f"INT8 model {b.version} failed its gates "
               f"(agreement {gates['int8_agreement'].get('top1_agreement')}, accuracy drop "
               f"{gates['int8_accuracy'].get('accuracy_drop')} vs max_drop {b.max_drop}); "
               f"publishing the {precision.upper()} IR as model.xml instead (slower on the line).")  # fmt: skip
        b.report["warnings"].append(msg)
        warnings.warn(msg, ExportGateWarning, stacklevel=4)
    if precision == "fp32":
        return _Choice(ref.model, precision, val_metrics(ref.f32, b.val_images, b.val_labels), dict(F32_CONFIG), qsettings)
    return _Choice(ref.model, precision, fp32_val, {}, qsettings)


def _int8_attempts(
    b: _Build, ref: _Reference, qsettings: dict[str, Any], attempts: list[dict[str, Any]]
) -> tuple[ov.Model, dict[str, Any]] | None:
    """Quantize and gate; on failure, NNCF accuracy control and gate again. The passing INT8 model and
    its metrics, or None. Each try is appended to ``attempts``; the last gates land in the report."""
    t = time.time()
    with nncf_output(b.progress):
        candidate = _int8_candidate(b, ref.model, qsettings)
    engine = b.engine(candidate)
    sample_probs = None
    if b.backbone is not None:  # a head on the INT8 backbone: its kept sample embeddings, as for FP32
        from .backbone import head_arrays

        sample_probs, _ = _sample_outputs(b, engine, "int8", *head_arrays(b.checkpoint["state_dict"]))
    holdout = ref.holdout
    agreement, accuracy, metrics = int8_gates(engine, ref.probs, ref.val_judged, b.sample_images, b.val_images, b.val_labels,
                                              b.min_agreement, b.max_drop, sample_probs=sample_probs, holdout_head=holdout)  # fmt: skip
    attempts.append({"method": "quantize", "int8_agreement": agreement, "int8_accuracy": accuracy, "metrics": metrics})
    b.timings["int8_s"] = time.time() - t
    b.say(int8_line("quantize", agreement, accuracy))
    if not (agreement["passed"] and accuracy["passed"]):
        if b.max_drop >= 0 and b.accuracy_control and b.backbone is None:
            t = time.time()
            try:
                calib = b.calibration_images[: qsettings["subset_size"]]
                calib_ref, _ = ref.f32.infer(calib)
                with nncf_output(b.progress):
                    candidate = quantize_with_accuracy_control(ref.model, calib, calib_ref.argmax(1), qsettings, b.min_agreement)
                agreement, accuracy, metrics = int8_gates(b.engine(candidate), ref.probs, ref.val_judged, b.sample_images,
                                                          b.val_images, b.val_labels, b.min_agreement, b.max_drop,
                                                          holdout_head=holdout)  # fmt: skip
                attempts.append({"method": "quantize_with_accuracy_control", "int8_agreement": agreement,
                                 "int8_accuracy": accuracy, "metrics": metrics})  # fmt: skip
                b.say(int8_line("accuracy control", agreement, accuracy))
            except Exception as exc:
                log.warning("quantize_with_accuracy_control failed: %s", exc)
                attempts.append({"method": "quantize_with_accuracy_control", "error": str(exc)})
            b.timings["int8_accuracy_control_s"] = time.time() - t
        else:
            attempts.append({"method": "quantize_with_accuracy_control", "skipped": "max_drop < 0" if b.max_drop < 0 else "disabled"})
    b.report["gates"]["int8_agreement"] = agreement
    b.report["gates"]["int8_accuracy"] = accuracy
    return (candidate, metrics) if agreement["passed"] and accuracy["passed"] else None


def _holdout_head(checkpoint: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """(weight f32 [C, D], bias f32 [C]) of the head a refitted head-only checkpoint was fitted
    without its validation images (``export.train.train_head``), else None."""
    head = checkpoint.get("holdout_head")
    if not head:
        return None
    return np.asarray(head["weight"], np.float32), np.asarray(head["bias"], np.float32)


def _int8_candidate(b: _Build, reference: ov.Model, qsettings: dict[str, Any]) -> ov.Model:
    """NNCF INT8 of the reference; for a head-only checkpoint, its head on the backbone's INT8 IR."""
    if b.backbone is None:
        return quantize_int8(reference, b.calibration_images, qsettings)
    from .backbone import compose_head, head_arrays

    weight, bias = head_arrays(b.checkpoint["state_dict"])
    return compose_head(read_ir(b.backbone.int8_xml), weight, bias, checkpoint_test_views(b.checkpoint))


def _model_info(b: _Build, embedding_dim: int, created_at: float) -> dict[str, Any]:
    """The ``rt_info["model_info"]`` both IRs carry (the line reads labels and preprocessing from it)."""
    size = b.size
    return {
        "model_type": "Classification",
        "arch": b.checkpoint["arch"],
        "labels": b.labels,
        "image_size": str(size),
        "input_size": [size, size],
        "input_width": str(size),
        "input_height": str(size),
        "input": {"name": "image", "dtype": "u8", "layout": "NHWC", "color": "BGR"},
        "outputs": {"probs": "f32 [N, C] softmax", "embedding": f"f32 [N, {embedding_dim}]"},
        "embedding_dim": str(embedding_dim),
        "test_time_views": ",".join(v or "plain" for v in checkpoint_test_views(b.checkpoint)),
        "resize_mode": RESIZE_MODE,
        "interpolation": INTERPOLATION,
        "normalization": {"mean": b.mean, "std": b.std, "color": "RGB", "range": "0-1", "embedded": True},
        "model_version": b.version,
        "version": b.version,
        "train_fingerprint": b.train_fingerprint,
        "created_at": str(created_at),
    }


def _save_irs(b: _Build, ref: _Reference, choice: _Choice, fp32_val: dict[str, Any]) -> float:
    """reference.xml (FP32) and model.xml (the chosen precision) into the staging folder, read back
    and checked; returns the creation time written into them."""
    created_at = time.time()
    common = _model_info(b, int(ref.emb.shape[1]), created_at)
    _set_model_info(ref.model, {**common, "precision": "fp32", "quantization": {}, "metrics": {"fp32": fp32_val},
                                "runtime_config": F32_CONFIG})  # fmt: skip
    with _quiet():
        ov.save_model(ref.model, str(b.staging / "reference.xml"), compress_to_fp16=False)
    published = {"fp32": fp32_val, "published": choice.metrics}
    if choice.model is not ref.model:
        _set_model_info(choice.model, {**common, "precision": choice.precision, "quantization": choice.qsettings,
                                       "metrics": published, "runtime_config": choice.runtime_config})  # fmt: skip
    else:
        _set_model_info(ref.model, {"precision": choice.precision, "runtime_config": choice.runtime_config, "metrics": published})
    with _quiet():
        ov.save_model(choice.model, str(b.staging / "model.xml"), compress_to_fp16=choice.precision == "fp16")
    _verify_saved(b.staging, b.size, len(b.labels), b.sample_images[: b.batch])
    return created_at


def _save_head(b: _Build) -> None:
    """``head.npz`` (weight f32 [C, D], bias f32 [C]) into the staging folder: the MatMul + Add the
    composed IRs end with, for ``edge_al.scoring`` to rescore stored embeddings without a backbone pass."""
    from edge_al.scoring import HEAD_FILE

    from .backbone import head_arrays

    weight, bias = head_arrays(b.checkpoint["state_dict"])
    with open(b.staging / HEAD_FILE, "wb") as fh:
        np.savez(fh, weight=weight, bias=bias)


def _version_meta(b: _Build, choice: _Choice, fp32_val: dict[str, Any], embedding_dim: int, created_at: float) -> dict[str, Any]:
    """The registry's meta.json of the version."""
    return {
        "labels": b.labels,
        "image_size": b.size,
        "arch": b.checkpoint["arch"],
        "precision": choice.precision,
        "fallback": b.report["fallback"],
        "embedding_dim": embedding_dim,
        "metrics": {
            "fp32": fp32_val,
            "published": choice.metrics,
            "torch": b.checkpoint.get("val_metrics", {}),
            # a refitted head has seen its validation images: the hold-out head's figures are the honest ones
            **({"holdout": b.checkpoint.get("val_metrics", {})} if b.checkpoint.get("refit") else {}),
        },
        "gates": {
            k: {"passed": v["passed"], **{m: v[m] for m in ("max_abs_prob_diff", "top1_agreement", "accuracy_drop") if m in v}}
            for k, v in b.report["gates"].items()
        },
        "quantization": choice.qsettings if choice.precision == "int8" else {},
        "runtime_config": choice.runtime_config,
        "num_train_labels": int(b.num_train_labels),
        "train_fingerprint": b.train_fingerprint,
        "mode": b.checkpoint.get("mode", "finetune"),
        "backbone_id": b.backbone.id if b.backbone is not None else None,
        "test_time_views": checkpoint_test_views(b.checkpoint),  # [""]: one pass an image; four views: four backbone passes
        "created_at": created_at,
        **b.extra_meta,
    }


def _verify_saved(staging: Path, size: int, num_classes: int, probe: np.ndarray) -> None:
    """Read back both IRs and check the contract, so a broken file is never published."""
    for name in ("reference.xml", "model.xml"):
        m = read_ir(staging / name)
        if [tuple(o.get_names()) for o in m.outputs] != [("probs",), ("embedding",)]:
            raise GateFailed(f"{name}: outputs are {[o.get_names() for o in m.outputs]}; expected probs and embedding.")
        shape = m.input(0).get_partial_shape()
        dims = [shape[i].get_length() if shape[i].is_static else -1 for i in range(1, 4)]
        if m.input(0).get_element_type() != ov.Type.u8 or dims != [size, size, 3]:
            raise GateFailed(f"{name}: input is {m.input(0).get_element_type()} {shape}; expected u8 [?, {size}, {size}, 3].")
        if m.output(0).get_partial_shape()[1] != num_classes:
            raise GateFailed(f"{name}: probs has shape {m.output(0).get_partial_shape()}; expected [?, {num_classes}].")
        probs, _ = Engine(staging / name, batch=len(probe), hint="LATENCY").infer(probe)
        if not np.all(np.isfinite(probs)) or np.max(np.abs(probs.sum(1) - 1.0)) > 1e-2:
            raise GateFailed(f"{name}: read back from disk, it does not give probabilities (row sums {probs.sum(1)}).")
