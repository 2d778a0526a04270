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

import io
import json
import logging
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np

from edge_al.errors import GateFailed, InvalidInput, MissingDependency
from edge_al.features import Backbone
from edge_al.registry import ModelVersion, Registry, atomic_write_json

from .train import (
    EmbeddingClassifier,
    classification_metrics,
    model_from_checkpoint,
    predict,
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

__all__ = [
    "F32_CONFIG",
    "ExportGateWarning",
    "build_reference_ir",
    "compile_static",
    "export_checkpoint",
    "export_onnx",
    "infer_ir",
    "quantize_int8",
    "read_model_info",
]

log = logging.getLogger(__name__)

F32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
RESIZE_MODE = "stretch"
INTERPOLATION = "cv2.INTER_AREA when shrinking, cv2.INTER_LINEAR when enlarging"
PRECISIONS = ("fp32", "fp16")
# INT8 agreement gate (see _int8_gates): min_agreement on samples whose FP32 top-2 margin is at least
# CONFIDENT_MARGIN, and at least AGREEMENT_FLOOR on all samples.
CONFIDENT_MARGIN = 0.2
AGREEMENT_FLOOR = 0.9
HEAD_PARITY_IMAGES = 16  # torch runs a 224 px backbone at ~30 img/s on 2 cores: a head-only export checks a few


class ExportGateWarning(UserWarning):
    """An INT8 gate failed and a float IR was published instead."""


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence third-party warnings (exporter and NNCF deprecations) inside the build steps only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


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
    # Batch 1 on disk: the line reshapes to its own static batch (see compile_static).
    model.reshape({0: ov.PartialShape([1, image_size, image_size, 3])})
    return model


def _set_model_info(model: ov.Model, info: dict[str, Any]) -> None:
    for key, value in info.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        model.set_rt_info(text, ["model_info", key])


def read_model_info(model: ov.Model) -> dict[str, Any]:
    """``rt_info["model_info"]`` as a dict, JSON values decoded."""
    out: dict[str, Any] = {}
    if not model.has_rt_info(["model_info"]):
        return out
    for key in model.get_rt_info()["model_info"]:  # type: ignore[index]
        text = model.get_rt_info(["model_info", str(key)]).astype(str)
        try:
            out[str(key)] = json.loads(text)
        except ValueError:
            out[str(key)] = text
    return out


def compile_static(core: ov.Core, model: ov.Model, batch: int, config: dict[str, str] | None = None) -> ov.CompiledModel:
    """Compile a copy of ``model`` reshaped to a static ``[batch, H, W, 3]`` input on the CPU.

    Static shapes are what the line runs, and an INT8 IR compiled with a dynamic batch
    crashes (SIGSEGV) on this CPU with openvino 2026.4.1.
    """
    m = model.clone()
    shape = m.input(0).get_partial_shape()
    m.reshape({0: ov.PartialShape([batch, shape[1], shape[2], shape[3]])})
    return core.compile_model(m, "CPU", config or {})


def infer_ir(compiled: ov.CompiledModel, images: np.ndarray, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``(probs float32 [N, C], embedding float32 [N, D])`` from u8 [N, H, W, 3] BGR.

    A compiled model with a static batch gets batches of exactly that size (the last one padded).
    """
    first = compiled.input(0).get_partial_shape()[0]
    static = first.is_static
    if static:
        batch = first.get_length()
    req = compiled.create_infer_request()
    probs, embs = [], []
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        n = len(chunk)
        if static and n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        res = req.infer({0: np.ascontiguousarray(chunk)})
        probs.append(np.array(res[compiled.output("probs")], dtype=np.float32)[:n])
        embs.append(np.array(res[compiled.output("embedding")], dtype=np.float32)[:n])
    return np.concatenate(probs), np.concatenate(embs)


# -- INT8 --------------------------------------------------------------------------------------
def _quantization_settings(arch: str, calibration_size: int) -> dict[str, Any]:
    mobilenet = arch.startswith("mobilenet")
    # DESIGN.md field note: MobileNetV3 needs MIXED and full bias correction, or top-1 collapses.
    return {
        "tool": f"nncf {nncf.__version__}",
        "preset": "mixed" if mobilenet else "performance",
        "fast_bias_correction": not mobilenet,
        "subset_size": int(calibration_size),
        "calibration": "pool images",
    }


def quantize_int8(reference: ov.Model, calibration_images: np.ndarray, settings: dict[str, Any]) -> ov.Model:
    """NNCF post-training INT8 of the (preprocessing-embedded) IR, calibrated on u8 NHWC BGR images."""
    dataset = nncf.Dataset(list(calibration_images), lambda img: img[None])
    with _quiet():
        return nncf.quantize(
            reference.clone(),
            dataset,
            preset=nncf.QuantizationPreset(settings["preset"]),
            fast_bias_correction=settings["fast_bias_correction"],
            subset_size=settings["subset_size"],
            ignored_scope=nncf.IgnoredScope(names=list(settings.get("ignored_names", [])), validate=False),
        )


# Each accuracy-control iteration ranks every quantizer group by compiling a model per group
# (about a minute for MobileNetV3 on 2 cores): bound it so a retrain does not stall for long.
# Near-tie predictions of a weakly trained model flip under INT8 and bf16 alike; no number of
# reverted layers fixes those, and the FP32 fallback is the right answer for them.
AC_MAX_ITERATIONS = 2
AC_RANKING_SUBSET = 64


def _quantize_with_accuracy_control(
    reference: ov.Model,
    calibration_images: np.ndarray,
    reference_labels: np.ndarray,
    settings: dict[str, Any],
    min_agreement: float,
) -> ov.Model:
    """NNCF accuracy control aimed at the agreement gate: its metric is top-1 agreement with the
    FP32 reference (``reference_labels`` = the FP32 IR's argmax at f32 on the calibration images,
    not the gate's sample), so it reverts the most sensitive layers to FP until INT8 agrees with
    FP32 on at least ``min_agreement`` of them. NNCF compiles its candidates at f32, like the gate."""
    calibration = nncf.Dataset(list(calibration_images), lambda img: img[None])
    validation = nncf.Dataset(list(zip(calibration_images, reference_labels, strict=True)), lambda item: item[0][None])

    def validate(compiled: ov.CompiledModel, data: Any) -> tuple[float, list[float]]:
        items = list(data)
        imgs = np.stack([it[0] for it in items])
        labels = np.array([it[1] for it in items])
        req = compiled.create_infer_request()
        hits: list[float] = []
        for img, label in zip(imgs, labels, strict=True):
            res = req.infer({0: img[None]})
            hits.append(float(np.argmax(res[compiled.output("probs")][0]) == label))
        return float(np.mean(hits)), hits

    with _quiet():
        return nncf.quantize_with_accuracy_control(
            reference.clone(),
            calibration,
            validation,
            validate,
            max_drop=max(0.0, 1.0 - min_agreement),
            drop_type=nncf.DropType.ABSOLUTE,
            preset=nncf.QuantizationPreset(settings["preset"]),
            fast_bias_correction=settings["fast_bias_correction"],
            subset_size=settings["subset_size"],
            advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(
                max_num_iterations=AC_MAX_ITERATIONS, ranking_subset_size=AC_RANKING_SUBSET
            ),
        )


# -- gates -------------------------------------------------------------------------------------
def _parity(name: str, ref_probs: np.ndarray, ref_emb: np.ndarray, probs: np.ndarray, emb: np.ndarray, tol: float) -> dict[str, Any]:
    prob_diff = float(np.max(np.abs(ref_probs - probs))) if len(probs) else 0.0
    scale = max(1.0, float(np.max(np.abs(ref_emb)))) if len(emb) else 1.0
    emb_diff = float(np.max(np.abs(ref_emb - emb))) / scale if len(emb) else 0.0
    top1 = float(np.mean(ref_probs.argmax(1) == probs.argmax(1))) if len(probs) else 1.0
    return {
        "name": name,
        "passed": bool(prob_diff < tol and emb_diff < tol),
        "max_abs_prob_diff": prob_diff,
        "max_rel_embedding_diff": emb_diff,
        "top1_agreement": top1,
        "tol": tol,
        "n": len(probs),
    }


def _int8_gates(
    int8: ov.CompiledModel,
    fp32_sample_probs: np.ndarray,
    fp32_val: dict[str, Any],
    sample_images: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    min_agreement: float,
    max_drop: float,
    batch: int,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    probs, _ = infer_ir(int8, sample_images, batch)
    same = probs.argmax(1) == fp32_sample_probs.argmax(1)
    agree = float(np.mean(same))
    # Near-ties (FP32 top-2 margin < CONFIDENT_MARGIN) flip under any rounding, bf16 included, without
    # changing what the model knows; the gate holds INT8 to min_agreement where FP32 is decided, and to
    # AGREEMENT_FLOOR everywhere, and the accuracy gate below catches a real loss.
    top2 = np.sort(fp32_sample_probs, axis=1)[:, -2:] if fp32_sample_probs.shape[1] >= 2 else np.ones((len(probs), 2))
    confident = (top2[:, 1] - top2[:, 0]) >= CONFIDENT_MARGIN
    agree_conf = float(np.mean(same[confident])) if confident.any() else 1.0
    passed = agree_conf >= min_agreement and agree >= min(AGREEMENT_FLOOR, min_agreement)
    agreement = {"name": "int8_agreement", "passed": bool(passed), "top1_agreement": agree,
                 "confident_agreement": agree_conf, "confident_n": int(confident.sum()), "confident_margin": CONFIDENT_MARGIN,
                 "agreement_floor": min(AGREEMENT_FLOOR, min_agreement), "passed_plain_rule": bool(agree >= min_agreement),
                 "min_agreement": min_agreement, "max_abs_prob_diff": float(np.max(np.abs(probs - fp32_sample_probs))),
                 "n": len(probs)}  # fmt: skip
    metrics = _val_metrics(int8, val_images, val_labels, batch)
    if len(val_labels):
        drop = fp32_val["accuracy"] - metrics["accuracy"]
        accuracy = {"name": "int8_accuracy", "passed": bool(drop <= max_drop), "accuracy_drop": float(drop),
                    "max_drop": max_drop, "fp32_accuracy": fp32_val["accuracy"], "int8_accuracy": metrics["accuracy"],
                    "n": len(val_labels)}  # fmt: skip
    else:
        accuracy = {"name": "int8_accuracy", "passed": max_drop >= 0, "skipped": "no validation images",
                    "max_drop": max_drop, "n": 0}  # fmt: skip
    return agreement, accuracy, metrics


def _val_metrics(compiled: ov.CompiledModel, images: np.ndarray, labels: np.ndarray, batch: int) -> dict[str, Any]:
    if not len(labels):
        return {"accuracy": None, "balanced_accuracy": None, "n": 0}
    probs, _ = infer_ir(compiled, images, batch)
    return classification_metrics(labels, probs.argmax(1))


def _check_images(name: str, images: np.ndarray, size: int, allow_empty: bool = False) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise InvalidInput(f"The '{name}' parameter must be uint8 [N, {size}, {size}, 3] BGR. Got {images.dtype} {images.shape} instead.")
    if not allow_empty and len(images) == 0:
        raise InvalidInput(f"The '{name}' parameter must hold at least one image. Got none.")
    return images


def nncf_output(progress: bool) -> AbstractContextManager[Any]:
    """Where NNCF's progress bars (rich, drawn on stdout) go: stderr for a person watching, nowhere with
    -q or --json, so stdout carries only the verb's own output."""
    return redirect_stdout(sys.stderr if progress else io.StringIO())


def _say(progress: bool, text: str) -> None:
    """A progress line, through one channel: printed on stderr for a person watching (``progress``)
    unless logging already shows INFO records (``-v``, a server's log), else logged; never both."""
    if progress and not log.isEnabledFor(logging.INFO):
        print(text, file=sys.stderr, flush=True)
    else:
        log.info(text)


# -- the whole export --------------------------------------------------------------------------
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
    labels = list(checkpoint["label_names"])
    mean, std = list(checkpoint["mean"]), list(checkpoint["std"])
    calibration_images = _check_images("calibration_images", calibration_images, size)
    sample_images = _check_images("sample_images", sample_images, size)
    val_images = _check_images("val_images", val_images, size, allow_empty=True)
    val_labels = np.asarray(val_labels, dtype=np.int64)
    if val_labels.shape != (len(val_images),):
        raise InvalidInput(f"The 'val_labels' parameter must be int [{len(val_images)}]. Got shape {val_labels.shape} instead.")
    nncf.set_log_level(logging.WARNING if progress else logging.ERROR)

    started = time.time()
    version = registry.reserve()
    staging = registry.staging()
    try:
        mv, report = _build_and_publish(
            checkpoint, registry, staging, version, labels, size, mean, std,
            calibration_images, val_images, val_labels, sample_images,
            max_drop=max_drop, parity_tol=parity_tol, min_agreement=min_agreement,
            train_fingerprint=train_fingerprint, num_train_labels=num_train_labels, extra_meta=extra_meta or {},
            precision_fallback=precision_fallback, int8=int8, exporter=exporter, accuracy_control=accuracy_control,
            batch=batch, progress=progress, started=started, backbone=backbone,
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if not (registry.root / version).exists():
            (registry.root / f".reserved-{version}").unlink(missing_ok=True)
        raise
    return mv, report


def _build_and_publish(
    checkpoint: dict[str, Any],
    registry: Registry,
    staging: Path,
    version: str,
    labels: list[str],
    size: int,
    mean: list[float],
    std: list[float],
    calibration_images: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    sample_images: np.ndarray,
    *,
    max_drop: float,
    parity_tol: float,
    min_agreement: float,
    train_fingerprint: str,
    num_train_labels: int,
    extra_meta: dict[str, Any],
    precision_fallback: str,
    int8: bool,
    exporter: str,
    accuracy_control: bool,
    batch: int,
    progress: bool,
    started: float,
    backbone: Backbone | None,
) -> tuple[ModelVersion, dict[str, Any]]:
    arch = checkpoint["arch"]
    timings: dict[str, float] = {}
    report: dict[str, Any] = {"version": version, "arch": arch, "image_size": size, "labels": labels, "gates": {},
                              "fallback": False, "warnings": []}  # fmt: skip

    # 1-2. the FP32 reference IR, checked against torch
    core = ov.Core()
    if backbone is not None:
        reference, ref_f32, ir_probs, ir_emb = _head_reference(
            checkpoint, backbone, core, sample_images, parity_tol, batch, report, timings
        )
    else:
        reference, ref_f32, ir_probs, ir_emb = _onnx_reference(
            checkpoint, staging, size, mean, std, core, sample_images, parity_tol, exporter, batch, report, timings, progress
        )
    gated = [g for g in ("onnx_parity", "ir_parity") if g in report["gates"]]
    failed = [g for g in gated if not report["gates"][g]["passed"]]
    for g in gated:
        gate = report["gates"][g]
        _say(progress, f"[{version}] gate {g}: {'pass' if gate['passed'] else 'FAIL'} "
                       f"max|dp|={gate['max_abs_prob_diff']:.2e} emb rel={gate['max_rel_embedding_diff']:.2e} (tol {parity_tol:g})")  # fmt: skip
    if failed:
        raise GateFailed(
            f"Export parity gate failed ({', '.join(failed)}): "
            + "; ".join(f"{g} max abs probability diff {report['gates'][g]['max_abs_prob_diff']:.3g}, "
                        f"embedding rel diff {report['gates'][g]['max_rel_embedding_diff']:.3g}" for g in failed)
            + f" (tol {parity_tol:g}). Nothing was published; the exporter output is not trustworthy."
        )  # fmt: skip
    return _gate_and_publish(
        checkpoint, registry, staging, version, labels, size, mean, std, reference, ref_f32, ir_probs, ir_emb, core,
        calibration_images, val_images, val_labels, sample_images, backbone=backbone, max_drop=max_drop,
        min_agreement=min_agreement, train_fingerprint=train_fingerprint, num_train_labels=num_train_labels,
        extra_meta=extra_meta, precision_fallback=precision_fallback, int8=int8, accuracy_control=accuracy_control,
        batch=batch, progress=progress, started=started, report=report, timings=timings,
    )  # fmt: skip


def _head_reference(
    checkpoint: dict[str, Any], backbone: Backbone, core: ov.Core, sample_images: np.ndarray, parity_tol: float, batch: int,
    report: dict[str, Any], timings: dict[str, float],
) -> tuple[ov.Model, ov.CompiledModel, np.ndarray, np.ndarray]:  # fmt: skip
    """A head-only checkpoint: its head composed onto the workspace's FP32 backbone IR (the backbone
    passed torch -> ONNX -> IR parity when it was built); torch vs IR on the first sample images."""
    from .backbone import compose_head, head_arrays

    t = time.time()
    weight, bias = head_arrays(checkpoint["state_dict"])
    reference = compose_head(core.read_model(str(backbone.fp32_xml)), weight, bias)
    ref_f32 = compile_static(core, reference, batch, F32_CONFIG)
    ir_probs, ir_emb = infer_ir(ref_f32, sample_images, batch)
    probe = slice(0, min(HEAD_PARITY_IMAGES, len(sample_images)))
    torch_probs, torch_emb = predict(model_from_checkpoint(checkpoint), sample_images[probe])
    report["gates"]["ir_parity"] = _parity("ir_parity", torch_probs, torch_emb, ir_probs[probe], ir_emb[probe], parity_tol)
    report["exporter"] = f"backbone {backbone.id} ({backbone.meta.get('exporter')}) + head"
    report["backbone"] = {"id": backbone.id, "parity": backbone.meta.get("parity")}
    timings["ir_s"] = time.time() - t
    return reference, ref_f32, ir_probs, ir_emb


def _onnx_reference(
    checkpoint: dict[str, Any], staging: Path, size: int, mean: list[float], std: list[float], core: ov.Core,
    sample_images: np.ndarray, parity_tol: float, exporter: str, batch: int, report: dict[str, Any],
    timings: dict[str, float], progress: bool,
) -> tuple[ov.Model, ov.CompiledModel, np.ndarray, np.ndarray]:  # fmt: skip
    """torch -> ONNX (parity vs torch) -> FP32 IR with preprocessing (parity vs torch at f32)."""
    t = time.time()
    model = model_from_checkpoint(checkpoint)
    torch_probs, torch_emb = predict(model, sample_images)
    onnx_dir = staging / "onnx"
    onnx_dir.mkdir()
    onnx_path = onnx_dir / "model.onnx"
    report["exporter"] = export_onnx(model, size, onnx_path, exporter)
    onnx_probs, onnx_emb = _onnx_predict(onnx_path, sample_images, mean, std)
    gate = _parity("onnx_parity", torch_probs, torch_emb, onnx_probs, onnx_emb, parity_tol)
    report["gates"]["onnx_parity"] = gate
    timings["onnx_s"] = time.time() - t

    # FP32 IR with preprocessing; parity at f32 (this CPU would otherwise run bf16)
    t = time.time()
    reference = build_reference_ir(onnx_path, size, mean, std)
    shutil.rmtree(onnx_dir)
    ref_f32 = compile_static(core, reference, batch, F32_CONFIG)
    ir_probs, ir_emb = infer_ir(ref_f32, sample_images, batch)
    report["gates"]["ir_parity"] = _parity("ir_parity", torch_probs, torch_emb, ir_probs, ir_emb, parity_tol)
    timings["ir_s"] = time.time() - t
    return reference, ref_f32, ir_probs, ir_emb


def _gate_and_publish(
    checkpoint: dict[str, Any], registry: Registry, staging: Path, version: str, labels: list[str], size: int,
    mean: list[float], std: list[float], reference: ov.Model, ref_f32: ov.CompiledModel, ir_probs: np.ndarray,
    ir_emb: np.ndarray, core: ov.Core, calibration_images: np.ndarray, val_images: np.ndarray, val_labels: np.ndarray,
    sample_images: np.ndarray, *, backbone: Backbone | None, max_drop: float, min_agreement: float,
    train_fingerprint: str, num_train_labels: int, extra_meta: dict[str, Any], precision_fallback: str, int8: bool,
    accuracy_control: bool, batch: int, progress: bool, started: float, report: dict[str, Any], timings: dict[str, float],
) -> tuple[ModelVersion, dict[str, Any]]:  # fmt: skip
    arch = checkpoint["arch"]
    fp32_val = _val_metrics(ref_f32, val_images, val_labels, batch)
    report["metrics"] = {"torch": checkpoint.get("val_metrics", {}), "fp32": fp32_val}

    # 3. INT8 and its gates
    qsettings = _quantization_settings(arch, min(300, len(calibration_images)))
    if backbone is not None:
        qsettings = {**backbone.meta.get("quantization", {}), "backbone": backbone.id, "head": "fp32"}
    precision = "int8"
    chosen: ov.Model | None = None
    published_metrics: dict[str, Any] = fp32_val
    attempts: list[dict[str, Any]] = []
    if int8:
        t = time.time()
        with nncf_output(progress):
            candidate = _int8_candidate(reference, calibration_images, qsettings, checkpoint, backbone, core)
        compiled = compile_static(core, candidate, batch)
        agreement, accuracy, metrics = _int8_gates(compiled, ir_probs, fp32_val, sample_images, val_images, val_labels,
                                                   min_agreement, max_drop, batch)  # fmt: skip
        attempts.append({"method": "quantize", "int8_agreement": agreement, "int8_accuracy": accuracy, "metrics": metrics})
        timings["int8_s"] = time.time() - t
        _say(progress, _int8_line(version, "quantize", agreement, accuracy))
        if not (agreement["passed"] and accuracy["passed"]):
            if max_drop >= 0 and accuracy_control and backbone is None:
                t = time.time()
                try:
                    calib = calibration_images[: qsettings["subset_size"]]
                    calib_ref, _ = infer_ir(ref_f32, calib, batch)
                    with nncf_output(progress):
                        candidate = _quantize_with_accuracy_control(reference, calib, calib_ref.argmax(1), qsettings,
                                                                    min_agreement)  # fmt: skip
                    compiled = compile_static(core, candidate, batch)
                    agreement, accuracy, metrics = _int8_gates(compiled, ir_probs, fp32_val, sample_images, val_images,
                                                               val_labels, min_agreement, max_drop, batch)  # fmt: skip
                    attempts.append({"method": "quantize_with_accuracy_control", "int8_agreement": agreement,
                                     "int8_accuracy": accuracy, "metrics": metrics})  # fmt: skip
                    _say(progress, _int8_line(version, "accuracy control", agreement, accuracy))
                except Exception as exc:
                    log.warning("quantize_with_accuracy_control failed: %s", exc)
                    attempts.append({"method": "quantize_with_accuracy_control", "error": str(exc)})
                timings["int8_accuracy_control_s"] = time.time() - t
            else:
                attempts.append({"method": "quantize_with_accuracy_control", "skipped": "max_drop < 0" if max_drop < 0 else "disabled"})
        report["gates"]["int8_agreement"] = agreement
        report["gates"]["int8_accuracy"] = accuracy
        if agreement["passed"] and accuracy["passed"]:
            chosen, published_metrics = candidate, metrics
    report["int8_attempts"] = attempts
    report["quantization"] = qsettings

    runtime_config: dict[str, str] = {}
    if chosen is None:
        precision = precision_fallback
        chosen = reference
        runtime_config = dict(F32_CONFIG) if precision == "fp32" else {}
        published_metrics = _val_metrics(ref_f32, val_images, val_labels, batch) if precision == "fp32" else fp32_val
        if int8:
            report["fallback"] = True
            msg = (f"INT8 model {version} failed its gates "
                   f"(agreement {report['gates']['int8_agreement'].get('top1_agreement')}, accuracy drop "
                   f"{report['gates']['int8_accuracy'].get('accuracy_drop')} vs max_drop {max_drop}); "
                   f"publishing the {precision.upper()} IR as model.xml instead (slower on the line).")  # fmt: skip
            report["warnings"].append(msg)
            # once, as a warning (the CLI shows it as one line; callers can filter or catch it), not also logged
            warnings.warn(msg, ExportGateWarning, stacklevel=3)
    report["precision"] = precision
    report["metrics"]["published"] = published_metrics

    # 4. metadata into the IRs, files, report, publish
    created_at = time.time()
    common_info: dict[str, Any] = {
        "model_type": "Classification",
        "arch": arch,
        "labels": labels,
        "image_size": str(size),
        "input_size": [size, size],
        "input_width": str(size),
        "input_height": str(size),
        "input": {"name": "image", "dtype": "u8", "layout": "NHWC", "color": "BGR"},
        "outputs": {"probs": "f32 [N, C] softmax", "embedding": f"f32 [N, {int(ir_emb.shape[1])}]"},
        "embedding_dim": str(int(ir_emb.shape[1])),
        "resize_mode": RESIZE_MODE,
        "interpolation": INTERPOLATION,
        "normalization": {"mean": mean, "std": std, "color": "RGB", "range": "0-1", "embedded": True},
        "model_version": version,
        "version": version,
        "train_fingerprint": train_fingerprint,
        "created_at": str(created_at),
    }
    _set_model_info(reference, {**common_info, "precision": "fp32", "quantization": {}, "metrics": {"fp32": fp32_val},
                                "runtime_config": F32_CONFIG})  # fmt: skip
    with _quiet():
        ov.save_model(reference, str(staging / "reference.xml"), compress_to_fp16=False)
    if chosen is not reference:
        _set_model_info(chosen, {**common_info, "precision": precision, "quantization": qsettings,
                                 "metrics": {"fp32": fp32_val, "published": published_metrics},
                                 "runtime_config": runtime_config})  # fmt: skip
        with _quiet():
            ov.save_model(chosen, str(staging / "model.xml"), compress_to_fp16=False)
    else:
        _set_model_info(reference, {"precision": precision, "runtime_config": runtime_config,
                                    "metrics": {"fp32": fp32_val, "published": published_metrics}})  # fmt: skip
        with _quiet():
            ov.save_model(reference, str(staging / "model.xml"), compress_to_fp16=precision == "fp16")
    _verify_saved(core, staging, size, len(labels), sample_images[:batch])
    save_checkpoint(checkpoint, staging / "checkpoint.pt")
    timings["total_s"] = time.time() - started
    report["timings"] = timings
    atomic_write_json(staging / "report.json", report)
    meta = {
        "labels": labels,
        "image_size": size,
        "arch": arch,
        "precision": precision,
        "fallback": report["fallback"],
        "embedding_dim": int(ir_emb.shape[1]),
        "metrics": {"fp32": fp32_val, "published": published_metrics, "torch": checkpoint.get("val_metrics", {})},
        "gates": {
            k: {"passed": v["passed"], **{m: v[m] for m in ("max_abs_prob_diff", "top1_agreement", "accuracy_drop") if m in v}}
            for k, v in report["gates"].items()
        },
        "quantization": qsettings if precision == "int8" else {},
        "runtime_config": runtime_config,
        "num_train_labels": int(num_train_labels),
        "train_fingerprint": train_fingerprint,
        "mode": checkpoint.get("mode", "finetune"),
        "backbone_id": backbone.id if backbone is not None else None,
        "created_at": created_at,
        **extra_meta,
    }
    mv = registry.publish(staging, meta, version)
    _say(progress, f"[{version}] published {precision} model at {mv.path} in {timings['total_s']:.1f}s")
    return mv, report


def _int8_candidate(
    reference: ov.Model, calibration_images: np.ndarray, qsettings: dict[str, Any], checkpoint: dict[str, Any],
    backbone: Backbone | None, core: ov.Core,
) -> ov.Model:  # fmt: skip
    """NNCF INT8 of the reference; for a head-only checkpoint, its head on the backbone's INT8 IR."""
    if backbone is None:
        return quantize_int8(reference, calibration_images, qsettings)
    from .backbone import compose_head, head_arrays

    weight, bias = head_arrays(checkpoint["state_dict"])
    return compose_head(core.read_model(str(backbone.int8_xml)), weight, bias)


def _int8_line(version: str, method: str, agreement: dict[str, Any], accuracy: dict[str, Any]) -> str:
    drop = accuracy.get("accuracy_drop")
    drop_text = "skipped (no val)" if drop is None else f"drop={drop:+.4f} (max {accuracy['max_drop']:g})"
    return (f"[{version}] int8 ({method}): agreement {'pass' if agreement['passed'] else 'FAIL'} "
            f"{agreement['confident_agreement']:.4f} on the {agreement['confident_n']} images FP32 is decided about "
            f"(min {agreement['min_agreement']:g}), {agreement['top1_agreement']:.4f} on all (min {agreement['agreement_floor']:g}); "
            f"accuracy {'pass' if accuracy['passed'] else 'FAIL'} {drop_text}")  # fmt: skip


def _verify_saved(core: ov.Core, staging: Path, size: int, num_classes: int, probe: np.ndarray) -> None:
    """Read back both IRs and check the contract, so a broken file is never published."""
    for name in ("reference.xml", "model.xml"):
        m = core.read_model(str(staging / name))
        if [tuple(o.get_names()) for o in m.outputs] != [("probs",), ("embedding",)]:
            raise GateFailed(f"{name}: outputs are {[o.get_names() for o in m.outputs]}; expected probs and embedding.")
        shape = m.input(0).get_partial_shape()
        if m.input(0).get_element_type() != ov.Type.u8 or [shape[i].get_length() if shape[i].is_static else -1 for i in range(1, 4)] != [
            size,
            size,
            3,
        ]:
            raise GateFailed(f"{name}: input is {m.input(0).get_element_type()} {shape}; expected u8 [?, {size}, {size}, 3].")
        if m.output(0).get_partial_shape()[1] != num_classes:
            raise GateFailed(f"{name}: probs has shape {m.output(0).get_partial_shape()}; expected [?, {num_classes}].")
        probs, _ = infer_ir(compile_static(core, m, len(probe)), probe)
        if not np.all(np.isfinite(probs)) or np.max(np.abs(probs.sum(1) - 1.0)) > 1e-2:
            raise GateFailed(f"{name}: read back from disk, it does not give probabilities (row sums {probs.sum(1)}).")
