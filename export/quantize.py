"""NNCF post-training INT8 of an IR (calibrated on pool images), and NNCF accuracy control aimed
at the INT8 agreement gate (:mod:`export.gates`)."""

from __future__ import annotations

import io
import sys
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, redirect_stdout
from typing import Any

import numpy as np

from edge_al.errors import MissingDependency

try:
    import nncf
    import openvino as ov
except ImportError as exc:  # pragma: no cover - depends on the install
    raise MissingDependency(f"INT8 needs openvino and nncf ({exc}): install edge-al[train].") from exc

__all__ = ["quantization_settings", "quantize_int8", "quantize_with_accuracy_control", "quiet"]


@contextmanager
def quiet() -> Iterator[None]:
    """Silence third-party warnings (exporter and NNCF deprecations) inside the build steps only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# CPUs without VNNI (AVX2 only: many line PCs) multiply u8 activations by s8 weights with an
# instruction whose int16 pair sums saturate; NNCF's overflow fix keeps every weight in 7 bits so they
# cannot. Measured on an AMD EPYC Zen 3 (AVX2 only), EfficientNet-Lite0 at 320 px on magnetic_tile:
# INT8 vs FP32 embedding median relative error 0.27 without it, 0.096 with it (the INT8 gates failed
# and every head round fell back to FP32 without it). A model is built once and runs on whatever CPU
# the line has, so every INT8 model gets it; it costs nothing where VNNI does the multiply.
OVERFLOW_FIX = "enable"


def quantization_settings(arch: str, calibration_size: int) -> dict[str, Any]:
    mobilenet = arch.startswith("mobilenet")
    # DESIGN.md field note: MobileNetV3 needs MIXED and full bias correction, or top-1 collapses.
    return {
        "tool": f"nncf {nncf.__version__}",
        "preset": "mixed" if mobilenet else "performance",
        "fast_bias_correction": not mobilenet,
        "subset_size": int(calibration_size),
        "calibration": "pool images",
        "overflow_fix": OVERFLOW_FIX,
    }


def _advanced(settings: dict[str, Any]) -> Any:
    """NNCF's advanced parameters of ``settings`` (settings written before the overflow fix: NNCF's default)."""
    fix = settings.get("overflow_fix")
    return nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix(fix)) if fix else None


def nncf_output(progress: bool) -> AbstractContextManager[Any]:
    """Where NNCF's progress bars (rich, drawn on stdout) go: stderr for a person watching, nowhere with
    -q or --json, so stdout carries only the verb's own output."""
    return redirect_stdout(sys.stderr if progress else io.StringIO())


def quantize_int8(reference: ov.Model, calibration_images: np.ndarray, settings: dict[str, Any]) -> ov.Model:
    """NNCF post-training INT8 of the (preprocessing-embedded) IR, calibrated on u8 NHWC BGR images."""
    dataset = nncf.Dataset(list(calibration_images), lambda img: img[None])
    with quiet():
        return nncf.quantize(
            reference.clone(),
            dataset,
            preset=nncf.QuantizationPreset(settings["preset"]),
            fast_bias_correction=settings["fast_bias_correction"],
            subset_size=settings["subset_size"],
            ignored_scope=nncf.IgnoredScope(names=list(settings.get("ignored_names", [])), validate=False),
            advanced_parameters=_advanced(settings),
        )


# Each accuracy-control iteration ranks every quantizer group by compiling a model per group
# (about a minute for MobileNetV3 on 2 cores): bound it so a retrain does not stall for long.
# Near-tie predictions of a weakly trained model flip under INT8 and bf16 alike; no number of
# reverted layers fixes those, and the FP32 fallback is the right answer for them.
AC_MAX_ITERATIONS = 2
AC_RANKING_SUBSET = 64


def quantize_with_accuracy_control(
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

    with quiet():
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
            advanced_quantization_parameters=_advanced(settings),
            advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(
                max_num_iterations=AC_MAX_ITERATIONS, ranking_subset_size=AC_RANKING_SUBSET
            ),
        )
