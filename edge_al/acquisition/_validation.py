"""Parameter checks shared by every strategy, with scikit-learn style messages.

Every message names the parameter, says what was expected and what was received:
``The 'n' parameter must be an int >= 1. Got 0 instead.``
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import numpy as np

__all__ = [
    "check_choice",
    "check_float",
    "check_int",
    "check_probs",
    "param_error",
]


def param_error(name: str, expected: str, got: object) -> ValueError:
    """Build the house-style error for a bad parameter value."""
    return ValueError(f"The '{name}' parameter must be {expected}. Got {got!r} instead.")


def check_int(name: str, value: object, *, low: int = 1, high: int | None = None) -> int:
    """Return ``value`` as an int in ``[low, high]`` or raise ``ValueError``."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    ivalue = 0
    if ok:
        ivalue = int(value)  # type: ignore[call-overload]
        ok = ivalue >= low and (high is None or ivalue <= high)
    if not ok:
        expected = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
        raise param_error(name, expected, value)
    return ivalue


def check_float(
    name: str,
    value: object,
    *,
    low: float,
    high: float,
    low_inclusive: bool = True,
) -> float:
    """Return ``value`` as a float in ``[low, high]`` (or ``(low, high]``) or raise."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        fvalue = float(value)  # type: ignore[arg-type]
        above = fvalue >= low if low_inclusive else fvalue > low
        ok = bool(np.isfinite(fvalue)) and above and fvalue <= high
    if not ok:
        bracket = "[" if low_inclusive else "("
        raise param_error(name, f"a float in {bracket}{low}, {high}]", value)
    return fvalue


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices`` or raise ``ValueError`` naming them all."""
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        raise param_error(name, "one of " + ", ".join(options), value)
    return value


def check_probs(probs: object) -> np.ndarray:
    """Validate class probabilities and return them as C-contiguous float32 ``[N, C]``.

    Rows must be finite, non-negative and sum to 1 within 1e-2 (softmax outputs); logits are
    rejected with a hint, because every uncertainty score assumes probabilities.
    """
    arr = np.asarray(probs)
    if arr.ndim != 2 or arr.shape[1] < 2 or not np.issubdtype(arr.dtype, np.number):
        shape = getattr(arr, "shape", None)
        raise ValueError(
            "The 'probs' parameter must be a 2-D float array [N, C] with C >= 2 classes. "
            f"Got an array of shape {shape} and dtype {arr.dtype} instead."
        )
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if out.shape[0] == 0:
        return out
    if not np.isfinite(out).all():
        raise ValueError("The 'probs' parameter must be finite. Got NaN or inf values instead; check the model outputs.")
    sums = out.sum(axis=1, dtype=np.float64)
    if out.min() < 0.0 or np.abs(sums - 1.0).max() > 1e-2:
        raise ValueError(
            "The 'probs' parameter must hold class probabilities (non-negative rows summing "
            f"to 1). Got row sums in [{sums.min():.3g}, {sums.max():.3g}] and minimum "
            f"{float(out.min()):.3g} instead; apply a softmax to logits first."
        )
    return out


def check_embedding_matrix(name: str, value: object, dim: int, hint: str = "") -> np.ndarray:
    """A float32 copy of ``value`` as ``[M, dim]`` (M may be 0; an empty input of any shape is
    ``[0, dim]``) or ``ValueError``; ``hint`` ends the expectation in the message."""
    arr = np.asarray(value)
    if arr.size == 0:
        arr = arr.reshape(0, dim)
    if arr.ndim != 2 or arr.shape[1] != dim or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(
            f"The '{name}' parameter must be a float array [M, {dim}] (M may be 0){hint}. "
            f"Got shape {arr.shape} and dtype {arr.dtype} instead."
        )
    return np.array(arr, dtype=np.float32, copy=True)
