"""The gates a model passes before it is published: parity (torch vs ONNX vs IR), INT8 top-1
agreement with the FP32 reference, INT8 accuracy against FP32. Each returns a JSON-able dict
with ``passed`` and the figures behind it (what ``report.json`` keeps)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_al.engine import Engine

from .train import classification_metrics

__all__ = ["AGREEMENT_FLOOR", "CONFIDENT_MARGIN", "int8_gates", "int8_line", "parity_gate", "val_metrics"]

# INT8 agreement gate (see int8_gates): min_agreement on samples whose FP32 top-2 margin is at least
# CONFIDENT_MARGIN, and at least AGREEMENT_FLOOR on all samples.
CONFIDENT_MARGIN = 0.2
AGREEMENT_FLOOR = 0.9


def parity_gate(name: str, ref_probs: np.ndarray, ref_emb: np.ndarray, probs: np.ndarray, emb: np.ndarray, tol: float) -> dict[str, Any]:
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


def int8_gates(
    int8: Engine,
    fp32_sample_probs: np.ndarray,
    fp32_val: dict[str, Any],
    sample_images: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    min_agreement: float,
    max_drop: float,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    probs, _ = int8.infer(sample_images)
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
    metrics = val_metrics(int8, val_images, val_labels)
    if len(val_labels):
        drop = fp32_val["accuracy"] - metrics["accuracy"]
        accuracy = {"name": "int8_accuracy", "passed": bool(drop <= max_drop), "accuracy_drop": float(drop),
                    "max_drop": max_drop, "fp32_accuracy": fp32_val["accuracy"], "int8_accuracy": metrics["accuracy"],
                    "n": len(val_labels)}  # fmt: skip
    else:
        accuracy = {"name": "int8_accuracy", "passed": max_drop >= 0, "skipped": "no validation images",
                    "max_drop": max_drop, "n": 0}  # fmt: skip
    return agreement, accuracy, metrics


def val_metrics(engine: Engine, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    if not len(labels):
        return {"accuracy": None, "balanced_accuracy": None, "n": 0}
    probs, _ = engine.infer(images)
    return classification_metrics(labels, probs.argmax(1))


def int8_line(method: str, agreement: dict[str, Any], accuracy: dict[str, Any]) -> str:
    """One human line for an INT8 try: each gate's verdict and figure."""
    drop = accuracy.get("accuracy_drop")
    drop_text = "skipped (no val)" if drop is None else f"drop={drop:+.4f} (max {accuracy['max_drop']:g})"
    return (f"int8 ({method}): agreement {'pass' if agreement['passed'] else 'FAIL'} "
            f"{agreement['confident_agreement']:.4f} on the {agreement['confident_n']} images FP32 is decided about "
            f"(min {agreement['min_agreement']:g}), {agreement['top1_agreement']:.4f} on all (min {agreement['agreement_floor']:g}); "
            f"accuracy {'pass' if accuracy['passed'] else 'FAIL'} {drop_text}")  # fmt: skip
