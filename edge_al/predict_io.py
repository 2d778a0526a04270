"""Rows and files of ``edge-al predict``: one Arrow schema, three formats, resumable writes.

Every path becomes one row (``SCHEMA``): the path, the top-1 label, its index and confidence,
top-k labels and probabilities, every class probability, the uncertainty scores, FRE and
k-NN novelty (null without a labeled reference), the model version, and ``error`` (null when the
image was scored; then every result column is null). ``--embedding`` adds ``embedding``.

Crash safety and resume, per format:

- Parquet: results are written as complete part files (``FILE.parts/part-NNNNNN.parquet``,
  each written to a temp file and renamed), and a run that finishes merges ``FILE`` and the parts
  into a new ``FILE`` (temp file, rename) and removes the parts. A kill at any moment leaves
  ``FILE`` (the last finished run) and the parts readable; the next run skips their paths.
- CSV and JSONL: rows are appended and flushed per batch; a line cut short by a kill is removed
  when the file is opened again.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import Conflict, InvalidInput
from .fsutil import atomic_write, fsync_dir
from .results import Predictions, label_name

__all__ = ["FORMATS", "SCHEMA", "Sink", "format_for", "open_sink", "result_table", "schema"]

FORMATS = ("parquet", "csv", "jsonl")
_F32_LIST = pa.list_(pa.float32())
SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("label", pa.string()),
        ("label_index", pa.int32()),
        ("confidence", pa.float32()),
        ("top_k_labels", pa.list_(pa.string())),
        ("top_k_probs", _F32_LIST),
        ("probs", _F32_LIST),
        ("least_confidence", pa.float32()),
        ("margin", pa.float32()),
        ("entropy", pa.float32()),
        ("fre", pa.float32()),
        ("knn", pa.float32()),
        ("model_version", pa.string()),
        ("error", pa.string()),
    ]
)


def schema(embedding: bool = False) -> pa.Schema:
    return SCHEMA.append(pa.field("embedding", _F32_LIST)) if embedding else SCHEMA


def format_for(out: str | Path, fmt: str | None) -> str:
    """The output format: ``fmt`` when given, else from the suffix (.csv, .jsonl/.ndjson, else parquet)."""
    if fmt:
        if fmt not in FORMATS:
            raise InvalidInput(f"The 'format' parameter must be one of {', '.join(FORMATS)}. Got {fmt!r} instead.")
        return fmt
    suffix = Path(out).suffix.lower()
    return {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(suffix, "parquet")


def _f32(values: np.ndarray, ok: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(values, dtype=np.float32), type=pa.float32(), mask=~ok)


def _lists(values: np.ndarray, ok: np.ndarray) -> pa.Array:
    """f32 [n, k] -> list<float32> [n], null where not ``ok``."""
    n, k = values.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32)) if n else pa.array([0], pa.int32())
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).ravel(), type=pa.float32())
    return pa.ListArray.from_arrays(offsets, flat, mask=pa.array(~ok))


def result_table(
    paths: Sequence[str], preds: Predictions, errors: dict[int, str], *, top_k: int = 3, embedding: bool = False, **extra: Any
) -> pa.Table:
    """The rows of one batch: ``paths`` [n], their ``preds`` (n rows), ``errors`` {position: reason}.

    ``extra``: more columns of n values appended as they are (``sample_id`` for ``score --ray``).
    """
    n = len(paths)
    ok = np.array([i not in errors for i in range(n)], dtype=bool)
    idx, val = preds.top_k(top_k)
    names = preds.label_names
    conf = preds.confidence
    scores = preds.scores()
    null = [None] * n

    def novelty(v: np.ndarray | None) -> pa.Array:
        return pa.nulls(n, pa.float32()) if v is None else _f32(v, ok)

    cols: dict[str, pa.Array] = {
        "path": pa.array(list(paths), pa.string()),
        "label": pa.array([names[i] if ok[i] else None for i in range(n)], pa.string()),
        "label_index": pa.array(preds.label_index.astype(np.int32), pa.int32(), mask=~ok),
        "confidence": _f32(conf, ok),
        "top_k_labels": pa.array(
            [[label_name(preds.labels, int(c)) for c in idx[i]] if ok[i] else None for i in range(n)], pa.list_(pa.string())
        ),
        "top_k_probs": _lists(val, ok),
        "probs": _lists(preds.probs, ok),
        **{k: novelty(scores[k]) for k in ("least_confidence", "margin", "entropy", "fre", "knn")},
        "model_version": pa.array([preds.version] * n, pa.string()),
        "error": pa.array([errors.get(i, "").replace("\n", " ") or None for i in range(n)] if errors else null, pa.string()),
    }
    if embedding:
        cols["embedding"] = _lists(preds.embedding, ok)
    table = pa.Table.from_pydict(cols, schema=schema(embedding))
    for name, values in extra.items():
        table = table.append_column(name, pa.array(values))
    return table


def error_table(paths: Sequence[str], reasons: Sequence[str], version: str, *, embedding: bool = False) -> pa.Table:
    """Rows for paths that never reached the model (missing file, empty glob): only path, version, error."""
    n = len(paths)
    cols = {f.name: pa.nulls(n, f.type) for f in schema(embedding)}
    cols["path"] = pa.array(list(paths), pa.string())
    cols["model_version"] = pa.array([version] * n, pa.string())
    cols["error"] = pa.array([r.replace("\n", " ") for r in reasons], pa.string())
    return pa.Table.from_pydict(cols, schema=schema(embedding))


class Sink(Protocol):
    done: set[str]
    errors_held: int

    def write(self, table: pa.Table) -> None: ...
    def close(self, complete: bool) -> None: ...


def _check_held(out: Path, versions: set[str], version: str) -> None:
    other = sorted(v for v in versions if v and v != version)
    if other:
        raise Conflict(
            f"{out} already holds results of model version {', '.join(other)}; this run uses {version}. "
            "Write to another --out, or remove the file to start over."
        )


class ParquetSink:
    """Part files while running (each complete), one merged file when the run finishes."""

    def __init__(self, out: Path, schema_: pa.Schema, version: str, rows_per_part: int = 8192) -> None:
        self.out, self.schema, self.rows_per_part = out, schema_, int(rows_per_part)
        self.parts = out.with_name(out.name + ".parts")
        self.done: set[str] = set()
        self.errors_held = 0
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        versions: set[str] = set()
        for src in self._sources():
            held = pq.ParquetFile(src).schema_arrow
            if held != self.schema:
                raise InvalidInput(
                    f"{src} has other columns than this run writes (was --embedding used?). Use the same options, or another --out."
                )
            t = pq.read_table(src, columns=["path", "model_version", "error"])
            self.done.update(t.column("path").to_pylist())
            versions.update(t.column("model_version").unique().to_pylist())
            self.errors_held += t.num_rows - t.column("error").null_count
        _check_held(out, versions, version)
        self._next = len(list(self.parts.glob("part-*.parquet"))) if self.parts.is_dir() else 0

    def _sources(self) -> list[Path]:
        if self.parts.is_dir():
            for tmp in self.parts.glob(".*.tmp"):  # a part that a kill interrupted: never renamed, never counted
                tmp.unlink()
        parts = sorted(self.parts.glob("part-*.parquet")) if self.parts.is_dir() else []
        return ([self.out] if self.out.exists() else []) + parts

    def write(self, table: pa.Table) -> None:
        self._buffer.append(table)
        self._buffered += table.num_rows
        if self._buffered >= self.rows_per_part:
            self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        table = pa.concat_tables(self._buffer)
        self._buffer, self._buffered = [], 0
        self.parts.mkdir(parents=True, exist_ok=True)
        while (target := self.parts / f"part-{self._next:06d}.parquet").exists():
            self._next += 1
        atomic_write(target, lambda f: pq.write_table(table, f))
        self._next += 1

    def close(self, complete: bool) -> None:
        self._flush()
        if not complete:
            return
        sources = self._sources()
        if sources == [self.out]:
            return

        def merge(f: Any) -> None:
            with pq.ParquetWriter(f, self.schema) as writer:
                for src in sources:
                    for batch in pq.ParquetFile(src).iter_batches(batch_size=self.rows_per_part):
                        writer.write_batch(batch)

        atomic_write(self.out, merge)
        shutil.rmtree(self.parts, ignore_errors=True)
        fsync_dir(self.out.parent)


class LineSink:
    """CSV or JSONL rows appended and flushed per batch; a torn last line is cut on reopen."""

    def __init__(self, out: Path, schema_: pa.Schema, version: str, fmt: str) -> None:
        self.out, self.fmt, self.names = out, fmt, schema_.names
        self.done: set[str] = set()
        self.errors_held = 0
        versions: set[str] = set()
        fresh = not out.exists() or out.stat().st_size == 0
        if not fresh:
            _cut_torn_line(out)
            for row in self._read():
                self.done.add(row["path"])
                versions.add(row.get("model_version") or "")
                self.errors_held += bool(row.get("error"))
            _check_held(out, versions, version)
        out.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(out, "a", encoding="utf-8", newline="")
        self._csv = csv.DictWriter(self._f, fieldnames=self.names) if fmt == "csv" else None
        if self._csv is not None and fresh:
            self._csv.writeheader()

    def _read(self) -> Any:
        with open(self.out, encoding="utf-8", newline="") as f:
            if self.fmt == "csv":
                yield from csv.DictReader(f)
            else:
                yield from (json.loads(line) for line in f if line.strip())

    def write(self, table: pa.Table) -> None:
        for row in table.to_pylist():
            if self._csv is not None:
                self._csv.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
            else:
                self._f.write(json.dumps(row, separators=(",", ":")) + "\n")
        self._f.flush()

    def close(self, complete: bool) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


def _cut_torn_line(path: Path) -> None:
    """Truncate ``path`` after its last newline (a row a kill cut short is dropped and redone)."""
    size = path.stat().st_size
    with open(path, "rb+") as f:
        pos = size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            block = f.read(step)
            cut = block.rfind(b"\n")
            if cut >= 0:
                if pos - step + cut + 1 != size:
                    f.truncate(pos - step + cut + 1)
                return
            pos -= step
        f.truncate(0)


def open_sink(out: str | Path, fmt: str, version: str, *, embedding: bool = False) -> Sink:
    """A sink for ``out`` in ``fmt``; its ``done`` holds the paths that ``out`` already has."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise InvalidInput(f"--out must be a file for a local run. Got the folder {path} instead (a Ray run writes a folder of shards).")
    if fmt == "parquet":
        return ParquetSink(path, schema(embedding), version)
    return LineSink(path, schema(embedding), version, fmt)
