"""The same batch scoring on a Ray cluster (``pip install 'edge-al[ray]'``).

Ray Data: the paths (on a filesystem every node sees, or pyarrow filesystem URIs) become a
dataset -> ``map_batches`` with a class-based actor pool: each actor compiles the model once
(``RayScorer``) and runs the local pipeline (``predict.stream_files``: loader threads overlap
decoding with inference) on its batches -> rows of ``predict_io.SCHEMA``:

- ``predict_ray``: each actor call writes its rows as one Parquet shard into the ``--out`` folder
  (a temp file renamed into place, so a kill never leaves a torn shard) and returns only path and
  error to the driver, which counts; a rerun skips the paths the shards hold.
- ``score_pool_ray``: the workspace's unscored samples; rows stream back to the driver, which
  lands them in the store exactly as ``scoring.score_pool`` does (embeddings, then predictions,
  then novelty).

Actors: one per ``cpus_per_actor`` CPUs of the cluster (default 2: one engine stream beside its
decoding thread), each engine limited to that many threads so actors do not oversubscribe a node.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import Settings
from .errors import InvalidInput, MissingDependency, NoActiveModel
from .registry import ModelVersion, Registry
from .store import Store

__all__ = ["RayScorer", "predict_ray", "score_pool_ray"]

_ROWS_PER_CALL = 2048  # paths an actor takes per map_batches call: 256 cost 3x in pipeline ramp-up and drain per call


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ModuleNotFoundError as exc:
        raise MissingDependency(
            f"--ray needs Ray Data ({exc.name} is missing): install edge-al[ray] (pip install 'edge-al[ray]')."
        ) from None
    return ray


class RayScorer:
    """One actor's compiled model: a batch ``{"path": str [n], ...}`` in, a ``pyarrow.Table`` of
    result rows out (extra input columns such as ``sample_id`` are carried through)."""

    def __init__(self, xml: str, version: str, settings: Settings, options: dict[str, Any], reference: Any = None) -> None:
        from .engine import Engine

        self.engine = Engine(xml, device="CPU", batch=int(options["batch"]), threads=options["threads"], version=version)
        self.settings, self.options, self.reference = settings, options, reference

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        from .predict import stream_files
        from .predict_io import result_table, schema
        from .results import Predictions

        paths = [str(p) for p in batch["path"]]
        extra = {k: v for k, v in batch.items() if k != "path"}
        parts: list[Predictions] = []
        errors: dict[int, str] = {}
        workers = self.options["threads"]
        for _, preds, bad in stream_files(self.engine, paths, self.settings, workers=workers, reference=self.reference):
            offset = sum(len(pr) for pr in parts)
            errors.update({offset + i: r for i, r in bad.items()})
            parts.append(preds)
        opts = self.options
        if not parts:
            table = schema(opts["embedding"]).empty_table()
        else:
            table = result_table(paths, Predictions.concat(parts), errors, top_k=opts["top_k"], embedding=opts["embedding"], **extra)
        if not opts.get("out"):
            return table
        # the actor writes its own shard (temp file, rename: a kill never leaves a torn one) and returns only
        # what the driver counts, so no result crosses the object store and no write task waits for a CPU
        write_shard(Path(opts["out"]), table)
        return table.select(["path", "error"])


def write_shard(folder: Path, table: Any) -> Path:
    """Write ``table`` as ``folder/part-<random>.parquet``, complete or not at all."""
    import uuid

    import pyarrow.parquet as pq

    from .fsutil import atomic_write

    return atomic_write(folder / f"part-{uuid.uuid4().hex}.parquet", lambda f: pq.write_table(table, f))


def _connect(address: str | None, quiet: bool) -> tuple[Any, bool]:
    """``(ray, started_here)``: an initialised Ray (this process's, or a new connection)."""
    ray = _ray()
    if ray.is_initialized():
        return ray, False
    ray.init(address=address or None, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=not quiet)
    return ray, True


def _dataset(ray: Any, items: list[dict[str, Any]], mv: ModelVersion, settings: Settings, options: dict[str, Any], reference: Any) -> Any:
    """``items`` -> the actor pool's result rows (lazy). The actor count comes from the cluster's CPUs."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = not options.get("quiet", False)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    per_actor = max(1, min(int(options["threads"]), cpus))
    actors = max(1, cpus // per_actor)
    blocks = max(actors * 2, -(-len(items) // (_ROWS_PER_CALL * 4)))
    ds = ray.data.from_items(items, override_num_blocks=min(blocks, max(1, len(items))))
    return ds.map_batches(
        RayScorer,
        fn_constructor_kwargs={"xml": str(mv.xml), "version": mv.version, "settings": settings, "options": options, "reference": reference},
        batch_size=_ROWS_PER_CALL,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=per_actor,
    )


def _held_paths(folder: Path) -> set[str]:
    """Paths in the shards of ``folder`` (each written whole: ``write_shard``); a leftover temp file is
    removed, and so is a shard that does not read (one written by another tool)."""
    import pyarrow.parquet as pq

    held: set[str] = set()
    if not folder.is_dir():
        return held
    for tmp in folder.glob(".*.tmp"):  # a shard a kill interrupted: never renamed, never counted
        tmp.unlink()
    for shard in sorted(folder.glob("*.parquet")):
        try:
            held.update(pq.read_table(shard, columns=["path"]).column("path").to_pylist())
        except Exception:
            shard.unlink()
    return held


def predict_ray(
    inputs: list[str],
    out: str | Path,
    mv: ModelVersion,
    settings: Settings,
    *,
    address: str | None = None,
    top_k: int = 3,
    embedding: bool = False,
    batch: int = 8,
    cpus_per_actor: int | None = None,
    quiet: bool = False,
    reference: Any = None,
) -> Any:
    """Score ``inputs`` (as ``edge-al predict`` expands them) on Ray into the folder ``out`` of
    Parquet shards; returns a ``predict_cli.PredictReport``."""

    from .predict_cli import PredictReport, todo_paths
    from .predict_io import error_table

    t0 = time.perf_counter()
    folder = Path(out).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise InvalidInput(f"--out must be a folder for a Ray run (it writes Parquet shards). Got the file {folder} instead.")
    todo, problems, already = todo_paths(inputs, _held_paths(folder))
    report = PredictReport(str(folder), mv.version, "parquet", already=already)
    ray, started = _connect(address, quiet)
    options: dict[str, Any] = {"batch": batch, "threads": cpus_per_actor or 2, "top_k": top_k, "embedding": embedding, "quiet": quiet}
    try:
        report.engine = {"ray_cpus": int(ray.cluster_resources().get("CPU", 0)), "cpus_per_actor": options["threads"]}
        folder.mkdir(parents=True, exist_ok=True)
        if problems:
            write_shard(folder, error_table([p for p, _ in problems], [r for _, r in problems], mv.version, embedding=embedding))
            _count(report, problems)
        if todo:
            options["out"] = str(folder)
            ds = _dataset(ray, [{"path": p} for p in todo], mv, settings, options, reference)
            for rows in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                failed = rows.filter(rows.column("error").is_valid())
                _count(report, list(zip(failed.column("path").to_pylist(), failed.column("error").to_pylist(), strict=True)))
    finally:
        if started:
            ray.shutdown()
    report.written = len(todo) + len(problems) - report.errors
    report.seconds = time.perf_counter() - t0
    return report


def _count(report: Any, errors: list[tuple[str, str]]) -> None:
    report.errors += len(errors)
    report.error_samples += errors[: max(0, 20 - len(report.error_samples))]


def score_pool_ray(
    settings: Settings,
    store: Store,
    registry: Registry,
    *,
    address: str | None = None,
    device: str = "CPU",
    batch: int = 8,
    cpus_per_actor: int | None = None,
    limit: int | None = None,
    progress: Any = None,
    quiet: bool = False,
) -> Any:
    """``edge-al score --ray``: score the active version's unscored samples on Ray and land them in
    the store as ``score_pool`` does; returns a ``scoring.ScoreReport``. The actors run on their
    nodes' CPUs (``device`` must be CPU); ``progress`` makes a bar as in ``score_pool``."""
    if device.upper() != "CPU":
        raise InvalidInput(f"score --ray runs on the workers' CPUs. Got --device {device!r}: drop it or use CPU.")
    from .scoring import EmbeddingFile, ScoreReport, _Writer, update_novelty
    from .storage import images_storage

    mv = registry.active()
    if mv is None:
        raise NoActiveModel("No model version is active: run `edge-al train` and `edge-al export` first.")
    t0 = time.perf_counter()
    done = store.scored_ids(mv.version)
    todo = np.setdiff1d(store.sample_ids(), done, assume_unique=True)[:limit]
    report = ScoreReport(version=mv.version, already=len(done))
    storage = images_storage(settings)  # the actors read each image where it lives: a path or a URL
    items = [{"path": storage.location(s.path), "sample_id": s.id} for s in store.samples(todo.tolist())]
    dim = int(mv.meta.get("embedding_dim") or 0)
    emb_file = EmbeddingFile(settings.embeddings_dir / f"{mv.version}.f16", dim) if dim else None
    if emb_file is None:
        raise NoActiveModel(f"Model {mv.version} does not declare its embedding size (meta.json embedding_dim).")
    ray, started = _connect(address, quiet)
    options = {"batch": batch, "threads": cpus_per_actor or 2, "top_k": 1, "embedding": True, "quiet": quiet}
    try:
        with _Writer(store, mv.version, emb_file, 256) as writer:  # keeps what was scored on an error (resumable)
            report.engine = {"ray_cpus": int(ray.cluster_resources().get("CPU", 0)), "cpus_per_actor": options["threads"]}
            bar = progress(total=len(items), unit="img", desc=f"score {mv.version} on Ray") if progress and items else None
            if items:
                for rows in _dataset(ray, items, mv, settings, options, None).iter_batches(batch_size=1024, batch_format="pyarrow"):
                    _land(rows, writer, report)
                    if bar is not None:
                        bar.update(rows.num_rows)
            if bar is not None:
                bar.close()
    finally:
        if started:
            ray.shutdown()
    report.seconds = time.perf_counter() - t0
    update_novelty(settings, store, mv, emb_file)
    emb_file.close()
    return report


def _land(rows: Any, writer: Any, report: Any) -> None:
    """Hand a batch of result rows to the store writer: ids int64 [n], probs f32 [n, C], embeddings f32 [n, D]."""
    ok = np.asarray(rows.column("error").is_null().to_numpy(zero_copy_only=False), dtype=bool)
    ids = np.asarray(rows.column("sample_id").to_numpy(), dtype=np.int64)
    for sid, err in zip(ids[~ok].tolist(), rows.column("error").filter(rows.column("error").is_valid()).to_pylist(), strict=True):
        report.failed.append((int(sid), err))
    if ok.any():
        good = rows.filter(ok)
        probs = np.stack(good.column("probs").to_numpy(zero_copy_only=False)).astype(np.float32)
        embs = np.stack(good.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
        order = np.argsort(ids[ok], kind="stable")
        writer.put(ids[ok][order], probs[order], embs[order])
        report.scored += int(ok.sum())
