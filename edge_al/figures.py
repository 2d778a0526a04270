"""How far a validation figure can be trusted, said next to the figure.

A model's accuracy and balanced accuracy are measured on the held-out validation split, which is
20% of the labels (stratified). Early on that is a handful of images: with 3 seed labels per class
and 6 classes it is 6 images, one per class, and one image more or less right moves balanced
accuracy by 1/6. Such figures are printed with a note instead of silently.

The threshold, ``MIN_VAL_PER_CLASS = 10`` validation images per class on average: balanced
accuracy is the mean of per-class recalls, and a recall measured on 10 images moves in steps of 0.1
with a binomial 95% half-width of up to 1.96 * sqrt(0.25 / 10) = 0.31 per class; averaged over C
classes that is about 0.31 / sqrt(C) (0.13 for 6 classes, 0.10 for 10): coarse, but enough to tell
a working model from a broken one and to compare two rounds that differ by more than that. Below
it, differences between rounds are mostly which images fell into the split.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["MIN_VAL_PER_CLASS", "gate_summary", "half_width_95", "validation_note", "validation_summary"]

MIN_VAL_PER_CLASS = 10


def half_width_95(n: int) -> float:
    """Worst-case (p = 0.5) binomial 95% half-width of an accuracy measured on ``n`` images."""
    return math.inf if n <= 0 else 1.96 * math.sqrt(0.25 / n)


def validation_note(n: int | None, num_classes: int) -> str | None:
    """``None`` when ``n`` validation images over ``num_classes`` classes are enough to trust,
    else a short note for people, e.g. "6 validation images (1.0 per class): too few to trust, ±0.40"."""
    if n is None:
        return "validation size unknown: treat as rough"
    classes = max(1, int(num_classes))
    if n >= MIN_VAL_PER_CLASS * classes:
        return None
    if n <= 0:
        return "no validation images: no figure to trust yet"
    return (
        f"{n} validation images ({n / classes:.1f} per class): too few to trust, ±{half_width_95(n):.2f}; "
        f"label more until about {MIN_VAL_PER_CLASS * classes} are held out ({MIN_VAL_PER_CLASS} per class)"
    )


def validation_summary(metrics: dict[str, Any] | None, num_classes: int) -> dict[str, Any]:
    """``{"n", "trusted", "note"}`` for a metrics dict that carries ``n`` (as export records it)."""
    n = None if not metrics or metrics.get("n") is None else int(metrics["n"])
    note = validation_note(n, num_classes)
    return {"n": n, "trusted": note is None, "note": note}


def gate_summary(report: dict[str, Any]) -> str:
    """An export report's gates in one line for people, e.g. "ir_parity pass, int8_agreement FAIL"
    (the figures are in the export's progress lines, ``report.json`` and ``--json``)."""
    gates = report.get("gates") or {}
    if not gates:
        return "none run"
    parts = []
    for name, gate in gates.items():
        passed = gate.get("passed") if isinstance(gate, dict) else gate
        parts.append(f"{name} {'pass' if passed else 'FAIL'}")
    return ", ".join(parts)
