"""The INT8 gates' rules (export/gates.py): a drop above max_drop fails when the validation images
give evidence of a loss (exact one-sided sign test), not when one near-tie flips on a round's
handful of validation images; the agreement gate fails on evidence that INT8 flips more than
1 - min_agreement of the images FP32 is decided about, and below a floor on all images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from edge_al.engine import Engine
from export.gates import (
    ACCURACY_ALPHA,
    AGREEMENT_FLOOR,
    GATE_ALPHA,
    _accuracy_gate,
    _agreement_gate,
    binomial_tail,
    holdout_predictions,
    int8_gates,
    sign_test,
)


@pytest.mark.parametrize(("lost", "won"), [(0, 0), (1, 0), (1, 1), (3, 0), (4, 0), (5, 0), (7, 2), (40, 10), (2, 9)])
def test_sign_test_is_the_exact_one_sided_binomial_test(lost: int, won: int) -> None:
    expected = 1.0 if lost + won == 0 else binomtest(lost, lost + won, 0.5, alternative="greater").pvalue
    assert sign_test(lost, won) == pytest.approx(expected, rel=1e-12)


def _case(n: int, fp32_right: int, lost: int, won: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels all 0; FP32 right on the first ``fp32_right``; INT8 differs on ``lost`` of those and ``won`` others."""
    labels = np.zeros(n, np.int64)
    fp32 = np.where(np.arange(n) < fp32_right, 0, 1)
    int8 = fp32.copy()
    int8[:lost] = 1
    int8[fp32_right : fp32_right + won] = 0
    return labels, fp32, int8


def _gate(n: int, fp32_right: int, lost: int, won: int, max_drop: float = 0.01) -> dict:
    labels, fp32, int8 = _case(n, fp32_right, lost, won)
    return _accuracy_gate(fp32, int8, labels, max_drop)


def test_one_flipped_image_on_a_small_validation_set_is_no_evidence_of_a_loss() -> None:
    g = _gate(40, 30, lost=1, won=0)
    assert g["accuracy_drop"] == pytest.approx(0.025) and g["lost"] == 1 and g["won"] == 0
    assert g["passed"] and not g["passed_plain_rule"] and g["sign_test_p"] == pytest.approx(0.5)
    assert _gate(4, 3, lost=1, won=0)["passed"]  # one of 4: a 25-point "drop", p = 0.5


def test_a_consistent_loss_fails_even_on_a_small_validation_set() -> None:
    g = _gate(20, 18, lost=5, won=0)
    assert g["sign_test_p"] == pytest.approx(1 / 32)
    assert g["sign_test_p"] < ACCURACY_ALPHA
    assert not g["passed"]


def test_on_a_large_validation_set_a_drop_above_max_drop_fails() -> None:
    g = _gate(2000, 1800, lost=40, won=10)  # 1.5 points: above max_drop, and significant
    assert g["accuracy_drop"] == pytest.approx(0.015) and not g["passed"]
    assert _gate(2000, 1800, lost=25, won=10)["passed"]  # 0.75 points: within max_drop


def test_negative_max_drop_always_fails() -> None:
    assert not _gate(40, 30, lost=0, won=0, max_drop=-1.0)["passed"]


# --- the agreement gate -------------------------------------------------------------------------


def _probs(decided: int, decided_flips: int, ties: int, tie_flips: int) -> tuple[np.ndarray, np.ndarray]:
    """FP32 and INT8 probabilities on ``decided`` samples (top-2 margin 0.8) and ``ties`` (margin 0.05),
    INT8's top-1 moved to another class on the first ``*_flips`` of each."""
    fp32 = np.array([[0.9, 0.1, 0.0]] * decided + [[0.45, 0.4, 0.15]] * ties)
    int8 = fp32.copy()
    flipped = np.r_[np.arange(decided_flips), decided + np.arange(tie_flips)]
    int8[flipped] = [0.3, 0.6, 0.1]
    return fp32, int8


def test_binomial_tail_is_the_exact_upper_tail() -> None:
    for k, n, p in [(0, 10, 0.3), (1, 170, 0.01), (2, 170, 0.01), (5, 170, 0.01), (3, 100, 0.01), (7, 20, 0.5), (4, 4, 1.0)]:
        expected = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
        assert binomial_tail(k, n, p) == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert binomial_tail(1, 50, 0.0) == 0.0  # any flip refutes a rate of 0


def test_a_few_decided_flips_are_no_evidence_many_are() -> None:
    g = _agreement_gate(*_probs(170, 2, 30, 0), 0.99)  # 98.8% on the decided samples
    assert g["confident_n"] == 170 and g["confident_flips"] == 2 and g["confident_agreement"] == pytest.approx(168 / 170)
    assert g["passed"] and not g["passed_confident_rule"] and g["binomial_p"] == pytest.approx(binomial_tail(2, 170, 0.01))
    g = _agreement_gate(*_probs(170, 5, 30, 0), 0.99)  # 97.1%: p = 0.029
    assert not g["passed"] and g["binomial_p"] < GATE_ALPHA
    assert _agreement_gate(*_probs(170, 0, 30, 0), 0.99)["passed"]
    assert not _agreement_gate(*_probs(170, 1, 30, 0), 1.0)["passed"]  # a minimum of 100% takes no flip
    assert _agreement_gate(*_probs(170, 60, 30, 0), 0.0)["passed"]  # a minimum of 0 takes anything


def test_near_tie_flips_are_held_to_the_floor() -> None:
    g = _agreement_gate(*_probs(100, 0, 100, 30), 0.99)  # 85% on all, every decided sample agrees
    assert g["passed"] and g["top1_agreement"] == pytest.approx(0.85) and not g["passed_plain_rule"]
    g = _agreement_gate(*_probs(100, 0, 100, 45), 0.99)  # 77.5% on all: below AGREEMENT_FLOOR
    assert not g["passed"] and g["top1_agreement"] < AGREEMENT_FLOOR and g["confident_flips"] == 0


def _tiny_classifier(head: tuple[np.ndarray, np.ndarray], shift: float) -> Engine:
    """A real compiled classifier on 4x4 images: the embedding is the mean (B, G, R) of an image, plus
    ``shift`` on G (how far a stand-in "INT8" backbone is off), then ``head`` (compose_head)."""
    import openvino as ov
    from openvino import opset13 as ops

    from export.backbone import compose_head

    image = ops.parameter(ov.PartialShape([-1, 4, 4, 3]), ov.Type.u8, name="image")
    mean = ops.reduce_mean(ops.convert(image, "f32"), ops.constant(np.array([1, 2], np.int64)), False)
    emb = ops.add(mean, ops.constant(np.array([[0.0, shift, 0.0]], np.float32)))
    backbone = ov.Model([ops.result(emb)], [image], "backbone")
    backbone.output(0).get_tensor().set_names({"embedding"})
    return Engine(compose_head(backbone, *head), batch=4, hint="LATENCY", precision="f32")


def test_the_accuracy_gate_judges_by_the_hold_out_head_when_there_is_one() -> None:
    """A refitted head has seen its validation images and sits far from them; quantization error shows
    near a boundary. Here the published head keeps every validation image in class 0 at both
    precisions, while the hold-out head (fitted without them) loses all ten to the INT8 backbone's
    error: judged by it, the gate fails with evidence; judged by the published model it would pass."""
    published = (np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32), np.array([0.0, -100.0], np.float32))
    holdout = (np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32), np.zeros(2, np.float32))
    fp32, int8 = _tiny_classifier(published, 0.0), _tiny_classifier(published, 20.0)
    images = np.zeros((10, 4, 4, 3), np.uint8)
    images[..., 0] = 100  # B: class 0's evidence
    images[..., 1] = np.arange(90, 100, dtype=np.uint8)[:, None, None]  # G: 90-99, within 20 of the hold-out boundary (100)
    labels = np.zeros(10, np.int64)
    fp32_probs, fp32_emb = fp32.infer(images)
    by_published = fp32_probs.argmax(1)
    by_holdout = holdout_predictions(holdout, fp32_emb)
    assert by_published.tolist() == by_holdout.tolist() == [0] * 10  # FP32 is right either way

    agreement, accuracy, metrics = int8_gates(int8, fp32_probs, by_holdout, images, images, labels, 0.99, 0.01, holdout_head=holdout)
    assert agreement["passed"] and metrics["accuracy"] == 1.0  # the published INT8 model itself still gets them right
    assert not accuracy["passed"] and accuracy["judged_by"] == "hold-out head"
    assert (accuracy["lost"], accuracy["won"], accuracy["fp32_accuracy"], accuracy["int8_accuracy"]) == (10, 0, 1.0, 0.0)

    agreement, accuracy, _ = int8_gates(int8, fp32_probs, by_published, images, images, labels, 0.99, 0.01)
    assert accuracy["passed"] and accuracy["judged_by"] == "published model" and accuracy["lost"] == 0
