"""A pretrained backbone as OpenVINO IRs, built once per workspace, architecture and input size.

``<home>/backbones/<arch>-<size>/`` holds::

    fp32.xml   the ImageNet backbone, preprocessing embedded, one output ``embedding`` f32 [N, D]
    int8.xml   the same, NNCF INT8, calibrated on pool images
    meta.json  arch, image_size, weights (SHA-256 of the file), id, parity gate, calibration

It serves three things:

- embeddings of the pool before anyone labels anything (``edge-al embed``; cold-start selection);
- the frozen-feature cache that trains a head in seconds (:mod:`edge_al.features` reads it with
  the FP32 IR at f32, so features equal torch's to ~1e-5);
- the INT8 models of head-only rounds: :func:`compose_head` appends the trained linear head
  (MatMul + Add + Softmax) to ``int8.xml``, so a round's export needs no ONNX export and no NNCF
  calibration, and every head-only version of the workspace shares one INT8 backbone.

The backbone goes torch -> ONNX -> IR through the same code as every model (export_onnx,
build_reference_ir) and must pass the same parity gate before anything is written. The folder
appears atomically (built in a staging folder, renamed into place).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nncf
import numpy as np
import openvino as ov
from openvino import opset13 as ops

from edge_al.config import Settings
from edge_al.engine import Engine
from edge_al.errors import GateFailed, InvalidInput
from edge_al.features import BACKBONE_META, Backbone, backbone_dir

from .convert import build_reference_ir, export_onnx
from .efficientnet_lite import LITE_WEIGHTS
from .gates import parity_gate
from .quantize import OVERFLOW_FIX, nncf_output, quantize_int8
from .quantize import quiet as _quiet
from .train import IMAGENET_MEAN, IMAGENET_STD, build_model, predict

__all__ = ["backbone_id", "compose_head", "ensure_backbone", "head_arrays", "weights_digest"]

log = logging.getLogger(__name__)

PARITY_TOL = 1e-3
BACKBONE_FORMAT = "edge-al-backbone/2"  # /2: INT8 weights in 7 bits (quantize.OVERFLOW_FIX)


def weights_digest(arch: str) -> str:
    """SHA-256 of the ImageNet weights file an architecture's backbone is built from."""
    if arch in LITE_WEIGHTS:
        return LITE_WEIGHTS[arch].sha256
    from .train import imagenet_weights_path

    return hashlib.sha256(imagenet_weights_path(arch).read_bytes()).hexdigest()


def _embedding_only(model: ov.Model) -> ov.Model:
    """The reference IR (probs, embedding) with only its ``embedding`` output."""
    emb = next(r for r in model.get_results() if "embedding" in r.output(0).get_names())
    out = ov.Model([emb], model.get_parameters(), "backbone")
    return out


def ensure_backbone(
    settings: Settings,
    arch: str,
    image_size: int,
    calibration_images: np.ndarray,
    *,
    parity_images: int = 8,
    batch: int = 8,
    progress: bool = True,
) -> Backbone:
    """The workspace's backbone for ``(arch, image_size)``, built on first use.

    ``calibration_images`` u8 [N, S, S, 3] BGR pool images: the NNCF calibration set (and the
    first ``parity_images`` check torch against the FP32 IR). A later call returns the folder
    as it is: the backbone, and so every embedding computed with it, does not change under a
    workspace's feet.

    With ``settings.backbone_cache`` (``EDGE_AL_BACKBONE_CACHE``), a backbone built from the same
    weights, size and calibration images by any workspace of the machine is copied instead of
    built again (about a minute at 320 px on 2 cores): the folder ``<cache>/<arch>-<size>-<id>``
    holds the IRs and meta.json; the id covers everything the IRs depend on.
    """
    target = backbone_dir(settings, arch, image_size)
    if (target / BACKBONE_META).is_file():
        return Backbone.open(target)
    if image_size < 32:
        raise InvalidInput(f"The 'image_size' parameter must be an int >= 32 for a pretrained backbone. Got {image_size} instead.")
    if len(calibration_images) == 0:
        raise InvalidInput("The pool is empty: ingest images first (the backbone's INT8 calibration needs them).")
    started = time.time()
    calib_digest = _calibration_digest(calibration_images)
    ident = _ident(arch, image_size, calib_digest)
    shared = settings.backbone_cache / f"{arch}-{int(image_size)}-{ident}" if settings.backbone_cache else None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        if not (shared is not None and _copy_built(shared, staging, ident)):
            meta = _build(arch, image_size, calibration_images, staging, parity_images, batch, progress, ident, calib_digest)
            meta["build_s"] = round(time.time() - started, 1)
            (staging / BACKBONE_META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
            if shared is not None:
                _share(staging, shared)
        elif progress:
            log.info("backbone %s-%d (%s) copied from %s", arch, image_size, ident, shared.parent)
        try:
            os.rename(staging, target)
        except OSError:  # another process built it first: theirs stands
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Backbone.open(target)


def backbone_id(arch: str, size: int, calibration: np.ndarray) -> str:
    """What a backbone's IRs depend on: format, architecture, input size, weights and calibration images."""
    return _ident(arch, size, _calibration_digest(calibration))


def _calibration_digest(calibration: np.ndarray) -> str:
    """SHA-256 of the calibration images' bytes (300 x 320 x 320 x 3 = 92 MB at the default: hashed once a build)."""
    return hashlib.sha256(np.ascontiguousarray(calibration).tobytes()).hexdigest()


def _ident(arch: str, size: int, calib_digest: str) -> str:
    return hashlib.sha256(f"{BACKBONE_FORMAT}|{arch}|{size}|{weights_digest(arch)}|{calib_digest}".encode()).hexdigest()[:16]


# What a shared backbone folder holds (the workspace's own files, features and gate samples, stay there).
_SHARED_FILES = ("fp32.xml", "fp32.bin", "int8.xml", "int8.bin", BACKBONE_META)


def _copy_built(shared: Path, staging: Path, ident: str) -> bool:
    """Copy a shared backbone into ``staging``; False (build it) when there is none, or when it is
    incomplete or another backbone's (its meta.json names another id)."""
    try:
        meta = json.loads((shared / BACKBONE_META).read_text(encoding="utf-8"))
        if meta.get("id") != ident or meta.get("format") != BACKBONE_FORMAT:
            log.warning("ignoring the shared backbone %s: it is not backbone %s", shared, ident)
            return False
        for name in _SHARED_FILES:
            shutil.copy2(shared / name, staging / name)
    except (OSError, ValueError) as exc:
        if (shared / BACKBONE_META).exists():
            log.warning("ignoring the shared backbone %s: %s", shared, exc)
        for name in _SHARED_FILES:
            (staging / name).unlink(missing_ok=True)
        return False
    return True


def _share(built: Path, shared: Path) -> None:
    """Copy a backbone just built into the machine's cache, atomically (a folder renamed into place);
    a cache that cannot be written only costs the next workspace a build."""
    try:
        shared.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{shared.name}-", dir=shared.parent))
        try:
            for name in _SHARED_FILES:
                shutil.copy2(built / name, tmp / name)
            os.rename(tmp, shared)
        except OSError:  # another workspace shared it first (or the copy failed): nothing of ours stays
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        log.warning("could not share the backbone in %s: %s", shared.parent, exc)


def _build(
    arch: str, size: int, calibration: np.ndarray, out: Path, parity_images: int, batch: int, progress: bool, ident: str, calib_digest: str
) -> dict[str, Any]:
    model = build_model(arch, 2, "imagenet").eval()
    probe = calibration[:parity_images]
    _, torch_emb = predict(model, probe)
    onnx_dir = out / "onnx"  # the dynamo exporter writes the weights beside the graph (backbone.onnx.data)
    onnx_dir.mkdir()
    exporter = export_onnx(model, size, onnx_dir / "backbone.onnx")
    reference = _embedding_only(build_reference_ir(onnx_dir / "backbone.onnx", size, IMAGENET_MEAN, IMAGENET_STD))
    shutil.rmtree(onnx_dir)
    _, ir_emb = Engine(_with_dummy_probs(reference), batch=batch, hint="LATENCY", precision="f32").infer(probe)
    gate = parity_gate("backbone_ir_parity", np.zeros((len(probe), 1)), torch_emb, np.zeros((len(probe), 1)), ir_emb, PARITY_TOL)
    if not gate["passed"]:
        raise GateFailed(
            f"The {arch} backbone's IR does not match torch: embedding rel diff {gate['max_rel_embedding_diff']:.3g} "
            f"(tol {PARITY_TOL:g}). Nothing was written."
        )
    # Depthwise-heavy like MobileNetV3 (DESIGN.md): MIXED and full bias correction, and the first and
    # last convolutions (the 3-channel stem; the 1x1 conv that makes the embedding) kept in float: on
    # the digits pool at 224 px, INT8 vs FP32 embedding relative error 0.098 (cosine 0.995) this way,
    # 0.226 with all convolutions quantized, 0.357 with performance + fast bias correction; the two
    # float convolutions are about 8% of the backbone's multiply-adds.
    convs = [op.get_friendly_name() for op in reference.get_ordered_ops() if op.get_type_name() in ("Convolution", "GroupConvolution")]
    qsettings = {"tool": "nncf", "preset": "mixed", "fast_bias_correction": False,
                 "subset_size": int(min(300, len(calibration))), "calibration": "pool images",
                 "ignored_names": [convs[0], convs[-1]], "overflow_fix": OVERFLOW_FIX}  # fmt: skip
    t = time.time()
    nncf.set_log_level(logging.WARNING)  # its INFO lines list every ignored node
    # NNCF's progress bars: on stderr when watching, nowhere with -q (never between the verb's stdout lines)
    with nncf_output(progress):
        int8 = quantize_int8(reference, calibration, qsettings)
    int8_s = time.time() - t
    with _quiet():
        ov.save_model(reference, str(out / "fp32.xml"), compress_to_fp16=False)
        ov.save_model(int8, str(out / "int8.xml"), compress_to_fp16=False)
    digest = weights_digest(arch)
    if progress:
        log.info("backbone %s-%d built: parity %.2e, INT8 calibration %.1fs", arch, size, gate["max_rel_embedding_diff"], int8_s)
    return {
        "format": BACKBONE_FORMAT,
        "id": ident,
        "arch": arch,
        "image_size": size,
        "embedding_dim": int(ir_emb.shape[1]),
        "weights": "imagenet",
        "weights_sha256": digest,
        "exporter": exporter,
        "parity": gate,
        "quantization": qsettings,
        "calibration_sha256": calib_digest,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "created_at": time.time(),
    }


def _with_dummy_probs(backbone: ov.Model) -> ov.Model:
    """(probs, embedding) outputs over an embedding-only model, for the shared infer helpers."""
    return compose_head(
        backbone, np.zeros((1, backbone.output(0).get_partial_shape()[1].get_length()), np.float32), np.zeros(1, np.float32)
    )


def compose_head(backbone: ov.Model, weight: np.ndarray, bias: np.ndarray, views: Sequence[str] = ()) -> ov.Model:
    """A classifier IR: ``backbone`` (one ``embedding`` output) + Linear(weight f32 [C, D], bias [C]) + Softmax.

    Outputs ``probs`` f32 [N, C] and ``embedding`` f32 [N, D], the model contract. The head stays
    FP32 inside an INT8 backbone (C x D multiply-adds: nothing next to the backbone).

    ``views`` (names of ``edge_al.features.VIEW_AXES``, e.g. ``("", "h", "v", "hv")``): test-time
    augmentation inside the IR: each image goes through the backbone once per view (its u8 NHWC
    input flipped in the graph), and the embedding is the mean of the views' embeddings (so the
    linear head's logits are the mean of the views' logits). The line pays one backbone pass per view.
    """
    from edge_al.features import VIEW_AXES

    views = list(views)
    unknown = [v for v in views if v not in VIEW_AXES]
    if unknown or len(set(views)) != len(views):
        raise InvalidInput(f"The 'views' parameter must name distinct views of {sorted(VIEW_AXES)}. Got {views!r} instead.")
    model = backbone.clone()
    emb_result = model.get_results()[0]
    emb = emb_result.input_value(0)
    if views not in ([], [""]):  # a single flipped view is applied too
        param = model.get_parameters()[0]
        targets = list(param.output(0).get_target_inputs())
        x = param.output(0)
        parts = [x if not VIEW_AXES[v] else _flipped(x, VIEW_AXES[v]) for v in views]
        batch = ops.concat(parts, 0)
        for target in targets:
            target.replace_source_output(batch.output(0))
        model.validate_nodes_and_infer_types()  # the backbone's shapes now follow the views' batch
        dim = emb.get_partial_shape()[1].get_length()
        stacked = ops.reshape(emb, ops.constant(np.array([len(views), -1, dim], np.int64)), False)
        emb = ops.reduce_mean(stacked, ops.constant(np.array([0], np.int64)), False).output(0)
        emb_result.input(0).replace_source_output(emb)
    w = ops.constant(np.ascontiguousarray(np.asarray(weight, dtype=np.float32).T))
    b = ops.constant(np.asarray(bias, dtype=np.float32)[None, :])
    probs = ops.softmax(ops.add(ops.matmul(emb, w, False, False), b), 1)
    probs_result = ops.result(probs)
    out = ov.Model([probs_result, emb_result], model.get_parameters(), "classifier")
    out.output(0).get_tensor().set_names({"probs"})
    out.output(1).get_tensor().set_names({"embedding"})
    return out


def _flipped(x: ov.Output, axes: Sequence[int]) -> ov.Output:
    """``x`` reversed along ``axes`` (a Slice from the last element back past the first, step -1)."""
    n = len(axes)
    const = [ops.constant(np.array(v, np.int64)) for v in ([-1] * n, [-(2**62)] * n, [-1] * n, list(axes))]
    return ops.slice(x, *const).output(0)


def head_arrays(state_dict: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(weight f32 [C, D], bias f32 [C]) of a checkpoint's head."""
    return state_dict["head.weight"].numpy().astype(np.float32), state_dict["head.bias"].numpy().astype(np.float32)
