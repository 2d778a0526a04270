"""The INT8 accuracy gate's rule (export/gates.py): a drop above max_drop fails when the validation
images give evidence of a loss (exact one-sided sign test), not when one near-tie flips on a
round's handful of validation images."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from export.gates import ACCURACY_ALPHA, _accuracy_gate, sign_test


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
    return _accuracy_gate({"accuracy": float(np.mean(fp32 == labels))}, fp32, int8, labels, max_drop)


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
