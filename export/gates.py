"""The gates a model passes before it is published: parity (torch vs ONNX vs IR), INT8 top-1
agreement with the FP32 reference, INT8 accuracy against FP32. Each returns a JSON-able dict
with ``passed`` and the figures behind it (what ``report.json`` keeps)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import binom

from edge_al.engine import Engine

from .train import classification_metrics

__all__ = [
    "ACCURACY_ALPHA",
    "AGREEMENT_FLOOR",
    "CONFIDENT_MARGIN",
    "GATE_ALPHA",
    "binomial_tail",
    "holdout_predictions",
    "int8_gates",
    "int8_line",
    "parity_gate",
    "sign_test",
    "val_metrics",
    "val_outputs",
    "val_predictions",
]

# INT8 agreement gate (see _agreement_gate): on the samples whose FP32 top-2 margin is at least
# CONFIDENT_MARGIN, INT8 flips fail the gate when they are evidence that more than 1 - min_agreement
# of them flip (exact one-sided binomial test at GATE_ALPHA); on all samples, top-1 agreement of at
# least AGREEMENT_FLOOR. The floor is what rounding alone costs a weak model on this kind of CPU:
# digits at 320 px, heads on 20-200 labels, the FP32 IR at its default bf16 agrees with itself at f32
# on 0.915-0.995 of 200 pool images, and the INT8 IR on 0.845-0.975 (docs/simulation/README.md).
CONFIDENT_MARGIN = 0.2
AGREEMENT_FLOOR = 0.8
# INT8 accuracy gate (see int8_gates): a drop above max_drop fails only when the validation images give
# evidence of a loss, an exact one-sided sign test on the images the two models disagree about at this level.
GATE_ALPHA = 0.05
ACCURACY_ALPHA = GATE_ALPHA


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
    fp32_val_judged: np.ndarray,
    sample_images: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    min_agreement: float,
    max_drop: float,
    sample_probs: np.ndarray | None = None,
    holdout_head: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The agreement gate on the sample images (``sample_probs``: the INT8 model's probabilities on them
    when the caller has them) and the accuracy gate on the validation images; and INT8's val metrics.

    The accuracy gate compares INT8's top-1 on the validation images with ``fp32_val_judged``, the FP32
    reference's, both by the published model or, with ``holdout_head`` (weight f32 [C, D], bias f32
    [C] of a head fitted without the validation images), both by that head on each precision's
    embeddings: a head refitted on every label has seen its validation images, and quantization error
    shows on images near a class boundary, not on the ones a head was fitted to (see
    :func:`holdout_predictions`). The metrics are always the published INT8 model's.
    """
    probs = int8.infer(sample_images)[0] if sample_probs is None else sample_probs
    agreement = _agreement_gate(fp32_sample_probs, probs, min_agreement)
    val_probs, val_emb = val_outputs(int8, val_images)
    pred = val_probs.argmax(1).astype(np.int64)
    metrics = val_metrics(int8, val_images, val_labels, pred)
    if len(val_labels):
        judged = pred if holdout_head is None else holdout_predictions(holdout_head, val_emb)
        accuracy = _accuracy_gate(fp32_val_judged, judged, np.asarray(val_labels), max_drop)
        accuracy["judged_by"] = "published model" if holdout_head is None else "hold-out head"
    else:
        accuracy = {"name": "int8_accuracy", "passed": max_drop >= 0, "skipped": "no validation images",
                    "max_drop": max_drop, "n": 0}  # fmt: skip
    return agreement, accuracy, metrics


def holdout_predictions(head: tuple[np.ndarray, np.ndarray], embeddings: np.ndarray) -> np.ndarray:
    """int64 [M]: the top-1 class of a linear head (weight [C, D], bias [C]) on a model's embeddings.

    A composed head IR ends with exactly this MatMul + Add (``export.backbone.compose_head``) on its
    ``embedding`` output, so the hold-out head on each precision's embeddings is the model that
    head would have been at that precision.
    """
    weight, bias = head
    logits = np.asarray(embeddings, np.float64) @ np.asarray(weight, np.float64).T + np.asarray(bias, np.float64)
    return logits.argmax(1).astype(np.int64)


def _agreement_gate(fp32_probs: np.ndarray, int8_probs: np.ndarray, min_agreement: float) -> dict[str, Any]:
    """INT8 top-1 agreement with FP32 on the gate's pool samples.

    Near-ties (FP32 top-2 margin < CONFIDENT_MARGIN) flip under any rounding, bf16 included, without
    changing what the model knows. Where FP32 is decided, INT8 must agree on min_agreement of the
    samples, judged like the accuracy gate: with ``flips`` of ``n`` decided samples, the gate fails
    when an exact one-sided binomial test rejects "INT8 flips at most 1 - min_agreement of them"
    (P[X >= flips], X ~ Binomial(n, 1 - min_agreement)) at GATE_ALPHA. On 170 decided samples and a
    0.99 minimum, 2 flips (98.8%) pass and 5 (97.1%) fail; a broken quantization (MobileNetV3
    without MIXED, DESIGN.md) flips dozens. Everywhere, top-1 agreement of at least AGREEMENT_FLOOR
    (or min_agreement when that is lower). The accuracy gate catches a real loss on labeled images.
    """
    same = int8_probs.argmax(1) == fp32_probs.argmax(1)
    agree = float(np.mean(same))
    top2 = np.sort(fp32_probs, axis=1)[:, -2:] if fp32_probs.shape[1] >= 2 else np.ones((len(same), 2))
    confident = (top2[:, 1] - top2[:, 0]) >= CONFIDENT_MARGIN
    n, flips = int(confident.sum()), int(np.sum(confident & ~same))
    agree_conf = 1.0 - flips / n if n else 1.0
    p = binomial_tail(flips, n, 1.0 - min_agreement)
    floor = min(AGREEMENT_FLOOR, min_agreement)
    passed = p >= GATE_ALPHA and agree >= floor
    return {"name": "int8_agreement", "passed": bool(passed), "top1_agreement": agree,
            "confident_agreement": agree_conf, "confident_n": n, "confident_flips": flips, "confident_margin": CONFIDENT_MARGIN,
            "binomial_p": p, "alpha": GATE_ALPHA, "agreement_floor": floor,
            "passed_plain_rule": bool(agree >= min_agreement), "passed_confident_rule": bool(agree_conf >= min_agreement),
            "min_agreement": min_agreement, "max_abs_prob_diff": float(np.max(np.abs(int8_probs - fp32_probs))) if len(same) else 0.0,
            "n": len(same)}  # fmt: skip


def _accuracy_gate(fp32_pred: np.ndarray, int8_pred: np.ndarray, labels: np.ndarray, max_drop: float) -> dict[str, Any]:
    """INT8 validation accuracy against FP32's on the same images.

    The plain rule (drop <= max_drop) is blind to the size of the validation set: with the 4 to 40
    images a round of active learning holds out, one image is a 2.5 to 25 point drop, so a model
    that flips one near-tie fails (docs/simulation/README.md gives the figures). Here a drop above
    max_drop fails only when it is evidence of a loss: of the images exactly one of the two models
    gets right, INT8 loses ``lost`` and wins ``won``; the gate fails when an exact one-sided sign test
    rejects "INT8 is no worse" (P[X >= lost], X ~ Binomial(lost + won, 1/2)) at ACCURACY_ALPHA. On a
    large validation set that is the plain rule; on a small one, a loss of one or two images passes
    and four of four fails. The agreement gate above bounds how many images may flip at all.
    """
    fp32_right = fp32_pred == labels
    int8_right = int8_pred == labels
    lost = int(np.sum(fp32_right & ~int8_right))
    won = int(np.sum(~fp32_right & int8_right))
    drop = float(np.mean(fp32_right) - np.mean(int8_right))
    p = sign_test(lost, won)
    passed = max_drop >= 0 and (drop <= max_drop or p >= ACCURACY_ALPHA)
    return {"name": "int8_accuracy", "passed": bool(passed), "accuracy_drop": drop, "max_drop": max_drop,
            "fp32_accuracy": float(np.mean(fp32_right)), "int8_accuracy": float(np.mean(int8_right)), "n": len(labels),
            "lost": lost, "won": won, "sign_test_p": p, "alpha": ACCURACY_ALPHA,
            "passed_plain_rule": bool(max_drop >= 0 and drop <= max_drop)}  # fmt: skip


def sign_test(lost: int, won: int) -> float:
    """One-sided exact sign test: P[X >= lost] for X ~ Binomial(lost + won, 1/2)."""
    return binomial_tail(lost, lost + won, 0.5)


def binomial_tail(k: int, n: int, p: float) -> float:
    """P[X >= k] for X ~ Binomial(n, p): 1 when k <= 0."""
    if k <= 0:
        return 1.0
    return float(binom.sf(k - 1, n, min(max(p, 0.0), 1.0)))


def val_outputs(engine: Engine, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probs f32 [M, C], embeddings f32 [M, D]) of the validation images; empty arrays for none."""
    if not len(images):
        return np.zeros((0, 1), np.float32), np.zeros((0, 1), np.float32)
    probs, emb = engine.infer(images)
    return probs, emb


def val_predictions(engine: Engine, images: np.ndarray) -> np.ndarray:
    """int64 [M]: the engine's top-1 class of each validation image."""
    return val_outputs(engine, images)[0].argmax(1).astype(np.int64)


def val_metrics(engine: Engine, images: np.ndarray, labels: np.ndarray, pred: np.ndarray | None = None) -> dict[str, Any]:
    if not len(labels):
        return {"accuracy": None, "balanced_accuracy": None, "n": 0}
    return classification_metrics(labels, val_predictions(engine, images) if pred is None else pred)


def int8_line(method: str, agreement: dict[str, Any], accuracy: dict[str, Any]) -> str:
    """One human line for an INT8 try: each gate's verdict and figure."""
    drop = accuracy.get("accuracy_drop")
    drop_text = (
        "skipped (no val)"
        if drop is None
        else (
            f"drop={drop:+.4f} (max {accuracy['max_drop']:g}; {accuracy['lost']} lost, {accuracy['won']} won "
            f"of {accuracy['n']}, sign test p={accuracy['sign_test_p']:.3f}, alpha {accuracy['alpha']:g})"
        )
    )
    return (f"int8 ({method}): agreement {'pass' if agreement['passed'] else 'FAIL'} "
            f"{agreement['confident_agreement']:.4f} on the {agreement['confident_n']} images FP32 is decided about "
            f"(min {agreement['min_agreement']:g}; {agreement['confident_flips']} flipped, binomial p={agreement['binomial_p']:.3f}), {agreement['top1_agreement']:.4f} on all (min {agreement['agreement_floor']:g}); "
            f"accuracy {'pass' if accuracy['passed'] else 'FAIL'} {drop_text}")  # fmt: skip
