"""``edge-al predict PATH... --model VERSION|DIR --out FILE``: score files without a store.

Files, folders (recursive), globs, list files (``@list.txt``); one row per image in Parquet
(default), CSV or JSONL (``edge_al.predict_io``); a file that cannot be read or decoded is a
row with an ``error`` and is counted (exit 3), never a crash. A rerun skips the paths the
output already holds. ``--ray [ADDRESS]`` runs the same job on a Ray cluster
(``edge_al.predict_ray``) and writes a folder of Parquet shards.
"""

from __future__ import annotations

import argparse
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .argtypes import positive_int

__all__ = ["PredictReport", "RowWriter", "register", "run_predict"]


@dataclass
class PredictReport:
    out: str
    version: str
    format: str
    written: int = 0
    errors: int = 0
    already: int = 0
    seconds: float = 0.0
    engine: dict[str, Any] = field(default_factory=dict)
    error_samples: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "version": self.version,
            "format": self.format,
            "written": self.written,
            "errors": self.errors,
            "already_in_output": self.already,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 1),
            "engine": self.engine,
            "first_errors": [{"path": p, "error": e} for p, e in self.error_samples],
        }


def todo_paths(inputs: list[str], done: set[str]) -> tuple[list[str], list[tuple[str, str]], int]:
    """``(paths to score, [(path, problem)] unusable, how many the output already holds)``; a path
    named twice is scored once. Memory: the path strings (about 100 bytes each), never images."""
    from .predict import expand_inputs

    todo: list[str] = []
    problems: list[tuple[str, str]] = []
    already = 0
    seen: set[str] = set()
    for path, problem in expand_inputs(inputs):
        if path in seen:
            continue
        seen.add(path)
        if path in done:
            already += 1
        elif problem is not None:
            problems.append((path, problem))
        else:
            todo.append(path)
    return todo, problems, already


def run_predict(
    inputs: list[str],
    out: str | Path,
    *,
    predictor: Any,
    fmt: str | None = None,
    top_k: int = 3,
    embedding: bool = False,
    workers: int | None = None,
    progress: Callable[..., Any] | None = None,
) -> PredictReport:
    """Score ``inputs`` with a ``Predictor`` into ``out``, skipping what ``out`` holds already."""
    from .predict import stream_files
    from .predict_io import error_table, format_for, open_sink  # imported before the clock: pyarrow takes 0.4 s

    t0 = time.perf_counter()
    kind = format_for(out, fmt)
    sink = open_sink(out, kind, predictor.version, embedding=embedding)
    report = PredictReport(str(out), predictor.version, kind, engine=predictor.engine.describe())
    todo, problems, report.already = todo_paths(inputs, sink.done)
    bar = progress(total=len(todo) + len(problems), unit="img", desc=f"predict {predictor.version}") if progress else None
    writer = RowWriter(sink, top_k=top_k, embedding=embedding)
    try:
        if problems:
            sink.write(error_table([p for p, _ in problems], [r for _, r in problems], predictor.version, embedding=embedding))
            _count_errors(report, problems, bar)
        stream = stream_files(predictor.engine, iter(todo), predictor.settings, workers=workers, reference=predictor.reference)
        for part, preds, bad in stream:
            writer.put(part, preds, bad)
            report.written += len(part) - len(bad)
            _count_errors(report, [(part[i], r) for i, r in bad.items()], bar, len(part) - len(bad))
    except BaseException:
        writer.close(complete=False)  # keep what was scored (a rerun resumes), then re-raise the cause
        raise
    else:
        writer.close(complete=True)
    finally:
        if bar is not None:
            bar.close()
    report.seconds = time.perf_counter() - t0
    return report


class RowWriter:
    """Builds result tables and hands them to a sink on its own thread, so the thread that feeds
    the engine never waits for Arrow or the disk (as ``scoring._Writer`` does for SQLite).

    Engine batches are grouped into tables of about ``group`` rows (one Arrow build per group,
    not per batch of 8). ``put`` blocks while 64 batches wait; the thread's first error is raised
    by ``put`` or ``close``.
    """

    def __init__(self, sink: Any, *, top_k: int, embedding: bool, group: int = 1024) -> None:
        self.sink, self.top_k, self.embedding, self.group = sink, top_k, embedding, group
        self._queue: queue.Queue[tuple[list[str], Any, dict[int, str]] | None] = queue.Queue(maxsize=64)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edge-al-predict-writer", daemon=True)
        self._thread.start()

    def put(self, paths: list[str], preds: Any, errors: dict[int, str]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((paths, preds, errors))

    def close(self, complete: bool) -> None:
        """Write what is queued, close the sink (``complete``: the run finished), re-raise an error."""
        self._queue.put(None)
        self._thread.join()
        self.sink.close(complete and self._error is None)
        if self._error is not None and complete:
            raise self._error

    def _run(self) -> None:
        from .predict_io import result_table
        from .results import Predictions

        pending: list[tuple[list[str], Any, dict[int, str]]] = []

        def flush() -> None:
            paths = [p for part, _, _ in pending for p in part]
            errors, offset = {}, 0
            for part, _, bad in pending:
                errors.update({offset + i: r for i, r in bad.items()})
                offset += len(part)
            preds = Predictions.concat([pr for _, pr, _ in pending])
            self.sink.write(result_table(paths, preds, errors, top_k=self.top_k, embedding=self.embedding))
            pending.clear()

        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain after a failure so that ``put`` never blocks
            try:
                pending.append(item)
                if sum(len(p) for p, _, _ in pending) >= self.group:
                    flush()
            except BaseException as exc:
                self._error = exc
        try:
            if pending and self._error is None:
                flush()
        except BaseException as exc:
            self._error = exc


def _count_errors(report: PredictReport, errors: list[tuple[str, str]], bar: Any, scored: int = 0) -> None:
    report.errors += len(errors)
    report.error_samples += errors[: max(0, 20 - len(report.error_samples))]
    if bar is not None:
        bar.update(scored + len(errors))


def cmd_predict(ctx: Any) -> int:
    from .predict import Predictor, _reference, resolve_model

    a = ctx.args
    mv = resolve_model(a.model, ctx.settings)
    if a.ray is not None:
        from .predict_ray import predict_ray

        report = predict_ray(a.paths, a.out, mv, ctx.settings, address=a.ray or None, top_k=a.top_k, embedding=a.embedding,
                             batch=a.batch, cpus_per_actor=a.cpus_per_actor, quiet=ctx.json or a.quiet,
                             reference=None if a.no_novelty else _reference(ctx.settings, mv))  # fmt: skip
    else:
        predictor = Predictor(mv, settings=ctx.settings, device=a.device, batch=a.batch, novelty=not a.no_novelty)
        report = run_predict(a.paths, a.out, predictor=predictor, fmt=a.format, top_k=a.top_k, embedding=a.embedding,
                             workers=a.workers, progress=ctx.progress())  # fmt: skip

    def human() -> None:
        print(
            f"predicted {report.written} images with {report.version} into {report.out} ({report.format}) in {report.seconds:.1f} s, "
            f"{report.images_per_s:.0f} img/s; errors {report.errors}; already in the output {report.already}"
        )
        for path, err in report.error_samples:
            print(f"  error {path}: {err}")

    ctx.emit(report.as_dict(), human)
    return 3 if report.errors else 0


def register(sub: Any) -> None:
    """Add the ``predict`` verb to the CLI's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser("predict", help="score image files into Parquet/CSV/JSONL (no store, no ingest)")
    p.add_argument("paths", nargs="+", help="files, folders (recursive), globs ('a/**/*.jpg'), list files (@list.txt)")
    p.add_argument("--model", default=None, help="a version (v0003), a version folder, a registry folder (default: the active version)")
    p.add_argument("--out", required=True, help="output file (.parquet default, .csv, .jsonl); with --ray a folder of Parquet shards")
    p.add_argument("--format", choices=["parquet", "csv", "jsonl"], default=None, help="override the format the suffix says")
    p.add_argument("--top-k", type=positive_int, default=3, help="how many of the most probable classes each row lists")
    p.add_argument("--embedding", action="store_true", help="add each image's embedding (a list of floats)")
    p.add_argument("--no-novelty", action="store_true", help="skip FRE/k-NN novelty even where the workspace has a labeled reference")
    p.add_argument("--device", default="CPU", help="CPU, GPU, GPU.N or AUTO")
    p.add_argument("--batch", type=positive_int, default=8, help="images per inference request (the compiled static batch)")
    p.add_argument("--workers", type=positive_int, default=None, help="decoding threads (default: cores, at most 4)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster (install edge-al[ray]); ADDRESS as ray.init takes it, default: RAY_ADDRESS or a local one")  # fmt: skip
    p.add_argument("--cpus-per-actor", type=positive_int, default=None, help="with --ray: CPUs per model actor, and its engine's threads (default 2); actors = cluster CPUs / this. "
                   "A Ray run writes Parquet shards (--format is ignored) on the workers' CPUs (--device is ignored)")  # fmt: skip
    p.set_defaults(func=cmd_predict)
