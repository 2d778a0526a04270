"""Pool scoring with the active model, resumable; and the embeddings it leaves on disk.

``score_pool`` runs every sample that has no prediction for the active version through the
engine. Three kinds of threads keep the engine busy:

- loaders (a small pool): chunks of 64 ids; cached images are read straight from the cache
  file (one ``preadv`` per run of consecutive ids), misses are decoded (reduced-scale JPEG
  decode, resize) and cached;
- the calling thread owns the engine's AsyncInferQueue, with 3x the runtime's optimal number
  of infer requests so that no stream idles while this thread is briefly elsewhere;
- a writer persists results: each flush writes its embedding rows first and then commits its
  prediction rows in one transaction, so a run killed at any point resumes where it stopped
  and never trusts a half-written row.

Embeddings live in ``<home>/embeddings/<version>.f16``: float16 rows at the sample id.

A version that is a linear head on a frozen backbone (``head.npz`` beside its IR) rescores the
samples an earlier version with the same backbone IR already embedded without running the
backbone: its probabilities are its head applied to those stored embeddings (``head_probs``),
which is what its IR computes from the same embedding (the head is the IR's last MatMul + Add +
Softmax; test-time views average embeddings before it). A retrain of the head then rescores a
pool in a matrix product instead of a backbone pass per image.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .acquisition import novelty_scores, uncertainty_scores
from .acquisition.cache import NoveltyCache
from .acquisition.embeddings import half_to_float32
from .acquisition.index import EXACT_MAX_LABELED
from .config import Settings
from .errors import NoActiveModel
from .pool import ImageCache
from .prediction_cache import PredictionCache
from .registry import ModelVersion, Registry
from .storage import images_storage
from .store import Store

__all__ = [
    "HEAD_FILE",
    "EmbeddingFile",
    "IdEmbeddings",
    "ScoreReport",
    "embedding_key",
    "embedding_source",
    "head_probs",
    "labeled_reference",
    "load_head",
    "novelty_cache",
    "prediction_cache",
    "score_pool",
]

_CHUNK_IMAGES = 64  # images loaded per worker task: a few engine batches, one read per run of cached ids
# Infer requests per optimal request: with only the optimal number (one per stream), a stream idles
# whenever the producer thread is busy; x3 measured +20% cached throughput (2 cores, batch 8).
_QUEUED_PER_REQUEST = 3
_READ_BLOCK = 16384  # ids per positioned read or mapped gather in EmbeddingFile.read
HEAD_FILE = "head.npz"  # a head-mode version's linear head: weight f32 [C, D], bias f32 [C]
_HEAD_CHUNK = 8192  # stored embeddings rescored per step by a head


class EmbeddingFile:
    """float16 rows of width ``dim`` at row = sample id, in a sparse file."""

    def __init__(self, path: str | Path, dim: int) -> None:
        self.path = Path(path)
        self.dim = int(dim)
        self.row_bytes = self.dim * 2
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass

    def write(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Write float rows [n, dim] at sample ids [n] (sorted runs are written in one call)."""
        data = np.ascontiguousarray(rows, dtype=np.float16)
        start = 0
        while start < len(ids):
            stop = start + 1
            while stop < len(ids) and ids[stop] == ids[stop - 1] + 1:
                stop += 1
            os.pwrite(self._fd, data[start:stop].tobytes(), int(ids[start]) * self.row_bytes)
            start = stop

    def read(self, ids: np.ndarray) -> np.ndarray:
        """float32 [len(ids), dim] for ascending or arbitrary ids; rows past the file's end read as
        zeros. In ascending blocks of ``_READ_BLOCK`` ids: a run of consecutive ids is one positioned
        read, scattered ids one C gather through a read-only mapping of the block's span (a k-NN
        update reads ~30,000-100,000 scattered rows of a 1M pool: a read call per row cost more
        than the rows), unmapped after each block; converted by ``half_to_float32``."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        inside = int(np.searchsorted(sorted_ids, os.fstat(self._fd).st_size // self.row_bytes))
        for s in range(0, inside, _READ_BLOCK):
            part = sorted_ids[s : min(inside, s + _READ_BLOCK)]
            lo, hi = int(part[0]), int(part[-1]) + 1
            if hi - lo == part.size and bool((np.diff(part) == 1).all()):
                raw = np.frombuffer(os.pread(self._fd, (hi - lo) * self.row_bytes, lo * self.row_bytes), dtype=np.float16)
                raw = raw.reshape(hi - lo, self.dim)
            else:
                span = np.memmap(self.path, dtype=np.float16, mode="r", offset=lo * self.row_bytes, shape=(hi - lo, self.dim))
                try:
                    raw = np.array(span[part - lo])
                finally:
                    del span
            out[order[s : s + part.size]] = half_to_float32(raw)
        return out


class IdEmbeddings:
    """An ``EmbeddingSource`` over the rows of chosen sample ids of an ``EmbeddingFile``."""

    def __init__(self, file: EmbeddingFile, ids: np.ndarray) -> None:
        self.file = file
        self.ids = np.asarray(ids, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.file.dim

    def chunk(self, start: int, stop: int) -> np.ndarray:
        return self.file.read(self.ids[start:stop])

    def take(self, indices: np.ndarray) -> np.ndarray:
        return self.file.read(self.ids[np.asarray(indices, dtype=np.int64)])


def embedding_file(settings: Settings, mv: ModelVersion) -> EmbeddingFile:
    dim = int(mv.meta.get("embedding_dim") or 0)
    if dim <= 0:
        raise NoActiveModel(f"Model {mv.version} does not declare its embedding size (meta.json embedding_dim).")
    return EmbeddingFile(settings.embeddings_dir / f"{mv.version}.f16", dim)


def prediction_cache(settings: Settings, mv: ModelVersion) -> PredictionCache:
    """The version's predictions as arrays, beside its embeddings (``<version>.predictions.npz``)."""
    return PredictionCache(settings.embeddings_dir / f"{mv.version}.predictions.npz")


def novelty_cache(settings: Settings, mv: ModelVersion) -> NoveltyCache:
    """The version's k-NN novelty cache, beside its embeddings (``<version>.novelty/``)."""
    return NoveltyCache(settings.embeddings_dir / f"{mv.version}.novelty")


def load_head(mv: ModelVersion) -> tuple[np.ndarray, np.ndarray] | None:
    """``(weight f32 [C, D], bias f32 [C])`` of a head-mode version, or None (no ``head.npz``, or
    one that does not fit the version's labels and embedding size)."""
    path = mv.path / HEAD_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            weight, bias = np.asarray(z["weight"], np.float32), np.asarray(z["bias"], np.float32)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # unreadable: score with the engine
        return None
    dim = int(mv.meta.get("embedding_dim") or 0)
    if weight.shape != (len(mv.labels), dim) or bias.shape != (len(mv.labels),):
        return None
    return weight, bias


def head_probs(weight: np.ndarray, bias: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """f32 [N, C]: softmax(embeddings @ weight.T + bias), computed in float64."""
    logits = np.asarray(embeddings, np.float64) @ weight.T.astype(np.float64) + bias.astype(np.float64)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def embedding_key(mv: ModelVersion) -> str | None:
    """What a version's embeddings depend on: the backbone IR it runs (backbone id and published
    precision), its runtime settings, test-time views and input size. None for a version that is
    not a head on a workspace backbone."""
    meta = mv.meta
    if not meta.get("backbone_id"):
        return None
    parts = [meta.get("backbone_id"), meta.get("precision"), meta.get("runtime_config") or {},
             meta.get("test_time_views") or [""], meta.get("image_size")]  # fmt: skip
    return json.dumps(parts, sort_keys=True)


def embedding_source(settings: Settings, registry: Registry, mv: ModelVersion) -> ModelVersion | None:
    """The newest other version whose stored embeddings ``mv``'s IR would reproduce (same backbone
    IR, precision, runtime settings, views and input size; its embedding file on disk), or None."""
    key = embedding_key(mv)
    if key is None:
        return None
    for other in reversed(registry.versions()):
        if other.version != mv.version and embedding_key(other) == key and (settings.embeddings_dir / f"{other.version}.f16").is_file():
            return other
    return None


@dataclass
class ScoreReport:
    version: str
    scored: int = 0
    already: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    engine: dict[str, Any] = field(default_factory=dict)
    # of ``scored``: samples whose probabilities came from this version's head on the stored
    # embeddings of ``reused_from`` (no backbone pass)
    reused: int = 0
    reused_from: str | None = None

    @property
    def images_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "scored": self.scored,
            "already_scored": self.already,
            "failed": [{"sample_id": i, "reason": r} for i, r in self.failed],
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 1),
            "engine": self.engine,
            "reused_embeddings": self.reused,
            "reused_from": self.reused_from,
        }


def _prefetch(
    ids: np.ndarray, store: Store, cache: ImageCache, chunk: int, executor: ThreadPoolExecutor, depth: int
) -> Iterator[tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]]:
    """Load chunks of sample ``ids`` on worker threads, ``depth`` chunks ahead of the consumer.

    Yields ``(ids int64 [n], images u8 [n, H, W, 3], failures [(position, reason)])``. Cached
    rows are read in one call per run of consecutive ids; only the ids missing from the cache
    are looked up in the store (on this thread) and decoded on the workers.
    """
    pending: deque[tuple[np.ndarray, Future[tuple[np.ndarray, list[tuple[int, str]]]]]] = deque()

    def submit(start: int) -> None:
        part = ids[start : start + chunk]
        missing = part[~cache.valid_mask(part)]
        samples = {s.id: s for s in store.samples(missing.tolist())} if len(missing) else {}
        pending.append((part, executor.submit(cache.load_ids, part, samples)))

    starts = iter(range(0, len(ids), chunk))
    for start in starts:
        submit(start)
        if len(pending) >= depth:
            break
    while pending:
        part, fut = pending.popleft()
        nxt = next(starts, None)
        if nxt is not None:
            submit(nxt)
        images, failures = fut.result()
        yield part, images, failures


def _batches(
    chunks: Iterator[tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]], batch: int
) -> Iterator[tuple[tuple[np.ndarray, list[tuple[int, str]]], np.ndarray]]:
    """Split loaded chunks into engine batches: ``((ids [b], failures [(position in batch, reason)]), images [b, H, W, 3])``."""
    for ids, images, failures in chunks:
        for start in range(0, len(ids), batch):
            stop = min(start + batch, len(ids))
            bad = [(pos - start, reason) for pos, reason in failures if start <= pos < stop]
            yield (ids[start:stop], bad), images[start:stop]


class _Writer:
    """Persists scored batches on its own thread, so the thread that feeds the engine never
    waits for SQLite or the disk.

    Each flush writes the embedding rows first, then commits the prediction rows in one
    transaction (a kill leaves no prediction without its embedding). ``close`` writes what is
    left and re-raises the first error the thread met; ``put`` raises it early.
    """

    def __init__(self, store: Store, version: str, emb_file: EmbeddingFile, commit_every: int) -> None:
        self.store, self.version, self.emb_file = store, version, emb_file
        self.commit_every = max(1, int(commit_every))
        self._queue: queue.Queue[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = queue.Queue(maxsize=64)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edge-al-score-writer", daemon=True)
        self._thread.start()

    def put(self, ids: np.ndarray, probs: np.ndarray, embs: np.ndarray) -> None:
        """Queue ids int64 [n], probs f32 [n, C], embeddings f32 [n, D] (blocks while 64 batches wait)."""
        if self._error is not None:
            raise self._error
        self._queue.put((ids, probs, embs))

    def close(self, raise_error: bool = True) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and raise_error:
            raise self._error

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        """Commit what was scored (resumable); on an exception that one propagates, not the writer's."""
        self.close(raise_error=exc is None)

    def _run(self) -> None:
        rows: list[tuple[int, np.ndarray, dict[str, float]]] = []
        ids_parts: list[np.ndarray] = []
        emb_parts: list[np.ndarray] = []

        def flush() -> None:
            if rows:
                self.emb_file.write(np.concatenate(ids_parts), np.concatenate(emb_parts))
                self.store.put_predictions(self.version, rows)
                rows.clear()
                ids_parts.clear()
                emb_parts.clear()

        while True:
            item = self._queue.get()
            if item is None:
                break
            if self._error is not None:
                continue  # drain after a failure so that ``put`` never blocks; close() re-raises
            try:
                ids, probs, embs = item
                unc = uncertainty_scores(probs)
                names = list(unc)
                columns = [unc[k].tolist() for k in names]
                for j, sid in enumerate(ids.tolist()):
                    rows.append((sid, probs[j], {k: col[j] for k, col in zip(names, columns, strict=True)}))
                ids_parts.append(ids)
                emb_parts.append(embs)
                if len(rows) >= self.commit_every:
                    flush()
            except BaseException as exc:
                self._error = exc
        try:
            if self._error is None:
                flush()
        except BaseException as exc:
            self._error = exc
        finally:
            self.store.close()  # this thread's own connection


def score_pool(
    settings: Settings,
    store: Store,
    registry: Registry,
    *,
    device: str = "CPU",
    batch: int = 8,
    workers: int | None = None,
    commit_every: int = 256,
    progress: Callable[..., Any] | None = None,
    limit: int | None = None,
    engine: Any = None,
    reuse: bool = True,
) -> ScoreReport:
    """Score every sample that has no prediction for the active version (resumable).

    With ``reuse`` (and no ``engine`` passed in), a head-mode version first rescores what an
    earlier version with the same backbone IR embedded (``embedding_source``), from those stored
    embeddings; only the rest goes through the engine.
    """
    mv = registry.active()
    if mv is None:
        raise NoActiveModel("No model version is active: run `edge-al train` and `edge-al export` first.")
    t0 = time.perf_counter()
    report = ScoreReport(version=mv.version)
    all_ids = store.sample_ids()
    done_ids = store.scored_ids(mv.version)
    todo_ids = np.setdiff1d(all_ids, done_ids, assume_unique=True)
    report.already = len(done_ids)
    if limit is not None:
        todo_ids = todo_ids[:limit]
    dim = int(mv.meta.get("embedding_dim") or 0)
    if dim <= 0:  # a version whose meta.json predates embedding_dim: the compiled model says
        engine = engine or _engine(mv, device, batch)
        dim = int(engine.embedding_dim)
    emb_file = EmbeddingFile(settings.embeddings_dir / f"{mv.version}.f16", dim)
    bar = progress(total=len(todo_ids), unit="img", desc=f"score {mv.version}") if progress else None
    try:
        with _Writer(store, mv.version, emb_file, commit_every) as writer:
            head = load_head(mv) if reuse and engine is None and len(todo_ids) else None
            source = embedding_source(settings, registry, mv) if head is not None else None
            if head is not None and source is not None:
                todo_ids = _rescore_from(settings, store, source, head, todo_ids, writer, report, bar)
            if len(todo_ids) or engine is not None:
                _score_with_engine(settings, store, mv, todo_ids, writer, report, bar, device, batch, workers, engine)
    finally:
        if bar is not None:
            bar.close()
    report.seconds = time.perf_counter() - t0
    update_novelty(settings, store, mv, emb_file)
    emb_file.close()
    return report


def _engine(mv: ModelVersion, device: str, batch: int) -> Any:
    from .engine import Engine  # the only import of openvino, kept lazy for light CLI verbs

    return Engine(mv.xml, device=device, batch=batch)


def _rescore_from(
    settings: Settings, store: Store, source: ModelVersion, head: tuple[np.ndarray, np.ndarray], todo_ids: np.ndarray,
    writer: _Writer, report: ScoreReport, bar: Any,
) -> np.ndarray:  # fmt: skip
    """Queue ``head``'s probabilities on ``source``'s stored embeddings of the ``todo_ids`` it scored;
    returns the ids left for the engine."""
    ids = np.intersect1d(todo_ids, store.scored_ids(source.version), assume_unique=True)
    src = embedding_file(settings, source)
    try:
        for start in range(0, len(ids), _HEAD_CHUNK):
            part = ids[start : start + _HEAD_CHUNK]
            emb = src.read(part)
            writer.put(part, head_probs(*head, emb), emb)
            if bar is not None:
                bar.update(len(part))
    finally:
        src.close()
    report.scored += len(ids)
    report.reused, report.reused_from = len(ids), source.version
    return np.setdiff1d(todo_ids, ids, assume_unique=True)


def _score_with_engine(
    settings: Settings, store: Store, mv: ModelVersion, todo_ids: np.ndarray, writer: _Writer, report: ScoreReport, bar: Any,
    device: str, batch: int, workers: int | None, engine: Any,
) -> None:  # fmt: skip
    """Run ``todo_ids`` through the engine (compiled here unless passed in) into ``writer``."""
    eng = engine or _engine(mv, device, batch)
    report.engine = eng.describe()
    cache = ImageCache(settings.cache_dir, eng.size, images_storage(settings))
    n_workers = workers or max(1, min(4, os.cpu_count() or 1))
    nireq = _QUEUED_PER_REQUEST * int(eng.nireq)
    report.engine["infer_requests"] = nireq
    chunk = eng.batch * max(1, _CHUNK_IMAGES // eng.batch)
    try:
        with ThreadPoolExecutor(max_workers=n_workers) as ex:
            chunks = _prefetch(todo_ids, store, cache, chunk, ex, depth=n_workers + 2)
            for (ids, failed), probs, embs in eng.stream(_batches(chunks, eng.batch), nireq=nireq):
                keep = np.ones(len(ids), dtype=bool)
                for pos, reason in failed:
                    keep[pos] = False
                    report.failed.append((int(ids[pos]), reason))
                if keep.all():
                    writer.put(ids, probs, embs)
                elif keep.any():
                    writer.put(ids[keep], probs[keep], embs[keep])
                report.scored += int(keep.sum())
                if bar is not None:
                    bar.update(len(ids))
    finally:
        cache.close()


def labeled_reference(
    store: Store, mv: ModelVersion, emb_file: EmbeddingFile, scored: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(sample ids [M], embeddings f32 [M, D], class indices [M])`` of the labeled samples that
    the version has scored and whose label it knows. ``scored``: the version's scored ids (int64
    ``[N]``) when the caller has them (else read from the store)."""
    ids, names = store.labeled()
    index = {name: i for i, name in enumerate(mv.labels)}
    is_scored = np.isin(ids, store.scored_ids(mv.version) if scored is None else scored)
    keep = [k for k, name in enumerate(names) if name in index and is_scored[k]]
    sel_ids = ids[keep] if keep else np.zeros(0, np.int64)
    classes = np.array([index[names[k]] for k in keep], dtype=np.int64)
    return sel_ids, emb_file.read(sel_ids), classes


def update_novelty(settings: Settings, store: Store, mv: ModelVersion, emb_file: EmbeddingFile, chunk: int = 8192) -> None:
    """Recompute FRE and k-NN novelty of every scored sample against the current labeled set
    (k-NN through the version's novelty cache: no search when the labeled set is unchanged)."""
    ids, probs = prediction_cache(settings, mv).load(store, mv.version)
    lab_ids, lab_emb, lab_cls = labeled_reference(store, mv, emb_file, ids)
    if len(ids) == 0:
        return
    src = IdEmbeddings(emb_file, ids)
    m = len(lab_ids)
    # the rule novelty_scores applies: exact k-NN over more than 1e9 pairs is left out
    cached = m > EXACT_MAX_LABELED or (0 < m and len(ids) * m <= 1_000_000_000)
    knn = novelty_cache(settings, mv).knn(ids, src, lab_ids, lab_emb) if cached else None
    scores = novelty_scores(probs, src, lab_emb, lab_cls, chunk_size=chunk, knn=knn)
    fre = scores.get("fre")
    knn = scores.get("knn")
    store.set_novelty(mv.version, ids, fre, knn)
