"""Import annotation decisions from CSV or JSON files (and lists of dicts from the API).

A row names a sample (``sample_id`` or ``path``), an ``action`` (accept, correct, reject), a
``label`` (needed for correct; for accept it defaults to the active model's guess) and an
``annotator``. Valid rows are committed one by one; each invalid row is reported with its
line and reason, and nothing else is lost.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EdgeALError, InvalidInput, NotFound
from .registry import Registry
from .storage import Storage
from .store import ACTIONS, Sample, Store

__all__ = ["AnnotationResult", "apply_annotations", "read_annotation_file"]


@dataclass
class AnnotationResult:
    written: int = 0
    unchanged: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    causes: list[EdgeALError] = field(default_factory=list)  # the error of each ``errors`` entry

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {"written": self.written, "unchanged": self.unchanged, "errors": self.errors}


def read_annotation_file(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .csv (header: sample_id or path, label, action, annotator) or .json file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InvalidInput(f"Cannot read {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{p} is not UTF-8 text.") from None
    if p.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{p} is not valid JSON: {exc}") from None
        if isinstance(data, dict):
            data = data.get("annotations", data.get("items"))
        if not isinstance(data, list):
            raise InvalidInput(f"{p}: expected a JSON list of annotation objects (or {{'annotations': [...]}}).")
        return [r if isinstance(r, dict) else {"_invalid": r} for r in data]
    reader = csv.DictReader(io.StringIO(text))
    fields = {f.strip().lower() for f in (reader.fieldnames or [])}
    if not fields & {"sample_id", "path"} or "action" not in fields:
        raise InvalidInput(
            f"{p}: the CSV header must name sample_id or path, and action (label, annotator optional). Got {sorted(fields)}."
        )
    return [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in reader]


def _find_sample(store: Store, storage: Storage | None, ref: str | int) -> Sample:
    """A sample by id, by its stored ref, or by a local path inside the images ``storage`` (whose
    rows keep the path relative to the root)."""
    try:
        return store.find_sample(ref)
    except NotFound:
        rel = storage.ref_for(ref) if storage is not None and isinstance(ref, str) else None
        if rel is None:
            raise
        return store.find_sample(rel)


def apply_annotations(
    store: Store,
    registry: Registry,
    rows: Iterable[Mapping[str, Any]],
    *,
    default_annotator: str = "",
    annotator: str | None = None,
    create_labels: bool = False,
    respect_leases: bool = False,
    storage: Storage | None = None,
) -> AnnotationResult:
    """Validate and commit each row on its own; invalid rows are collected with their reasons.

    Each row is recorded under ``annotator`` when given (the API's key identity; a row's own
    ``annotator`` is then ignored), else under the row's ``annotator``, else ``default_annotator``.
    ``respect_leases``: a row on a sample another annotator has leased fails (``LeaseConflict``).
    ``storage``: the images storage, to find a sample by a local path inside its root.
    """
    result = AnnotationResult()
    mv = registry.active()
    for line, row in enumerate(rows, start=1):
        try:
            if "_invalid" in row or not isinstance(row, Mapping):
                raise InvalidInput("the row is not an object with sample_id/path, action, label.")
            ref = row.get("sample_id") or row.get("id") or row.get("path")
            if ref in (None, ""):
                raise InvalidInput("the row names no sample_id or path.")
            sample = _find_sample(store, storage, ref if not isinstance(ref, float) else int(ref))
            action = str(row.get("action") or "").strip().lower()
            if action not in ACTIONS:
                raise InvalidInput(f"action must be one of {', '.join(ACTIONS)}; got {row.get('action')!r}.")
            label = str(row.get("label") or "").strip() or None
            version = None
            if action == "accept" and label is None:
                if mv is None:
                    raise InvalidInput("accept without a label needs an active model's guess; give the label.")
                pred = store.prediction(sample.id, mv.version)
                if pred is None:
                    raise InvalidInput(f"sample {sample.id} has no prediction from {mv.version} to accept; give the label.")
                label = mv.labels[pred.label_index]
                version = mv.version
            who = annotator if annotator is not None else str(row.get("annotator") or default_annotator)
            if store.add_annotation(sample.id, action, label, who, version, create_label=create_labels, respect_leases=respect_leases):
                result.written += 1
            else:
                result.unchanged += 1
        except EdgeALError as exc:
            result.errors.append({"row": line, "ref": str(row.get("sample_id") or row.get("path") or ""), "reason": str(exc)})
            result.causes.append(exc)
    return result
