"""Pool scoring with the active model, resumable; and the embeddings it leaves on disk.

``score_pool`` runs every sample that has no prediction for the active version through the
engine. Decoding (reduced-scale JPEG decode, resize, cache) runs on worker threads ahead of
inference; the calling thread owns the engine's AsyncInferQueue. Each finished chunk writes
its embedding rows first and then commits its prediction rows in one transaction, so a run
killed at any point resumes where it stopped and never trusts a half-written row.

Embeddings live in ``<home>/embeddings/<version>.f16``: float16 rows at the sample id.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .acquisition import novelty_scores, uncertainty_scores
from .config import Settings
from .errors import NoActiveModel
from .pool import ImageCache
from .registry import ModelVersion, Registry
from .store import Sample, Store

__all__ = ["EmbeddingFile", "IdEmbeddings", "ScoreReport", "labeled_reference", "score_pool"]


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
        """float32 [len(ids), dim] for ascending or arbitrary ids (reads each contiguous span once)."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        if len(ids) == 0:
            return out
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        start = 0
        while start < len(sorted_ids):
            stop = start + 1
            # one read per span whose gaps are small (a few rows) to keep calls few
            while stop < len(sorted_ids) and sorted_ids[stop] - sorted_ids[stop - 1] <= 8:
                stop += 1
            lo, hi = int(sorted_ids[start]), int(sorted_ids[stop - 1]) + 1
            raw = os.pread(self._fd, (hi - lo) * self.row_bytes, lo * self.row_bytes)
            block = np.zeros((hi - lo) * self.dim, dtype=np.float16)
            got = np.frombuffer(raw, dtype=np.float16)
            block[: len(got)] = got
            block2 = block.reshape(hi - lo, self.dim)
            out[order[start:stop]] = block2[sorted_ids[start:stop] - lo]
            start = stop
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


@dataclass
class ScoreReport:
    version: str
    scored: int = 0
    already: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    engine: dict[str, Any] = field(default_factory=dict)

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
        }


def _prefetch(
    samples: list[Sample], cache: ImageCache, batch: int, executor: ThreadPoolExecutor, depth: int
) -> Iterator[tuple[tuple[list[Sample], list[int]], np.ndarray]]:
    """Decode batches on worker threads, ``depth`` batches ahead of the consumer."""
    pending: deque[tuple[list[Sample], Future[tuple[np.ndarray, list[int]]]]] = deque()
    starts = iter(range(0, len(samples), batch))
    for start in starts:
        part = samples[start : start + batch]
        pending.append((part, executor.submit(cache.load_many, part)))
        if len(pending) >= depth:
            break
    while pending:
        part, fut = pending.popleft()
        nxt = next(starts, None)
        if nxt is not None:
            nxt_part = samples[nxt : nxt + batch]
            pending.append((nxt_part, executor.submit(cache.load_many, nxt_part)))
        images, failed = fut.result()
        yield (part, failed), images


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
) -> ScoreReport:
    """Score every sample that has no prediction for the active version (resumable)."""
    from .engine import Engine  # the only import of openvino, kept lazy for light CLI verbs

    mv = registry.active()
    if mv is None:
        raise NoActiveModel("No model version is active: run `edge-al train` and `edge-al export` first.")
    t0 = time.perf_counter()
    eng = engine or Engine(mv.xml, device=device, batch=batch)
    report = ScoreReport(version=mv.version, engine=eng.describe())
    all_ids = store.sample_ids()
    done_ids = store.scored_ids(mv.version)
    todo_ids = np.setdiff1d(all_ids, done_ids, assume_unique=True)
    report.already = len(done_ids)
    if limit is not None:
        todo_ids = todo_ids[:limit]
    samples = store.samples(todo_ids.tolist())
    cache = ImageCache(settings.cache_dir, eng.size)
    emb_file = EmbeddingFile(settings.embeddings_dir / f"{mv.version}.f16", eng.embedding_dim)
    bar = progress(total=len(samples), unit="img", desc=f"score {mv.version}") if progress else None
    pending: list[tuple[int, np.ndarray, dict[str, float]]] = []
    pending_ids: list[int] = []
    pending_embs: list[np.ndarray] = []

    def flush() -> None:
        if not pending:
            return
        emb_file.write(np.array(pending_ids, dtype=np.int64), np.concatenate(pending_embs))
        store.put_predictions(mv.version, pending)
        pending.clear()
        pending_ids.clear()
        pending_embs.clear()

    n_workers = workers or max(1, min(4, os.cpu_count() or 1))
    try:
        with ThreadPoolExecutor(max_workers=n_workers) as ex:
            batches = _prefetch(samples, cache, eng.batch, ex, depth=2 * n_workers + 2)
            for (part, failed), probs, embs in eng.stream(batches):
                bad = set(failed)
                keep = [i for i in range(len(part)) if i not in bad]
                for i in bad:
                    report.failed.append((part[i].id, f"cannot read or decode {part[i].path}"))
                if keep:
                    unc = uncertainty_scores(probs[keep])
                    for j, i in enumerate(keep):
                        pending.append((part[i].id, probs[i], {k: float(v[j]) for k, v in unc.items()}))
                        pending_ids.append(part[i].id)
                    pending_embs.append(embs[keep])
                report.scored += len(keep)
                if len(pending) >= commit_every:
                    flush()
                if bar is not None:
                    bar.update(len(part))
            flush()
    finally:
        if bar is not None:
            bar.close()
        cache.close()
    report.seconds = time.perf_counter() - t0
    update_novelty(settings, store, mv, emb_file)
    emb_file.close()
    return report


def labeled_reference(store: Store, mv: ModelVersion, emb_file: EmbeddingFile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(sample ids [M], embeddings f32 [M, D], class indices [M])`` of the labeled samples that
    the version has scored and whose label it knows."""
    ids, names = store.labeled()
    index = {name: i for i, name in enumerate(mv.labels)}
    scored = set(store.scored_ids(mv.version).tolist())
    keep = [k for k, (sid, name) in enumerate(zip(ids.tolist(), names, strict=True)) if name in index and sid in scored]
    sel_ids = ids[keep] if keep else np.zeros(0, np.int64)
    classes = np.array([index[names[k]] for k in keep], dtype=np.int64)
    return sel_ids, emb_file.read(sel_ids), classes


def update_novelty(settings: Settings, store: Store, mv: ModelVersion, emb_file: EmbeddingFile, chunk: int = 8192) -> None:
    """Recompute FRE and k-NN novelty of every scored sample against the current labeled set."""
    _, lab_emb, lab_cls = labeled_reference(store, mv, emb_file)
    ids, probs = store.predictions(mv.version)
    if len(ids) == 0:
        return
    src = IdEmbeddings(emb_file, ids)
    scores = novelty_scores(probs, src, lab_emb, lab_cls, chunk_size=chunk)
    fre = scores.get("fre")
    knn = scores.get("knn")
    with store.tx() as c:
        c.executemany(
            "UPDATE predictions SET fre = ?, knn = ? WHERE sample_id = ? AND model_version = ?",
            [
                (None if fre is None else float(fre[i]), None if knn is None else float(knn[i]), int(ids[i]), mv.version)
                for i in range(len(ids))
            ],
        )
