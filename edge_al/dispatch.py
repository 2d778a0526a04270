"""The model behind the service: one dispatcher thread that batches concurrent requests.

Request threads call ``ModelHolder.score(images)``; each image becomes a work item (image,
``Future``) on the batcher's queue (``edge_al.serving.batcher``: how batches form, adapting their
size to the load). One dispatcher thread owns the compiled model's ``AsyncRunner`` (an
``AsyncInferQueue``; DESIGN.md: never share an infer request between threads) and loops: take
the next batch from the batcher, start it on the smallest compiled batch size that fits (padded
to it); a runtime thread resolves its futures. ``batching=False`` compiles the model with batch 1
and sends every image alone (the benchmark's baseline: one inference per request, ``nireq`` in
parallel, as a server without a batcher does).

Hot swap: ``reload()`` (called by a watcher thread that polls ``registry.active_version()``
every ``poll_s``, and callable directly after a promote) compiles the new ``Engine`` on the
calling thread, then hands it to the dispatcher, which swaps between batches: batches already
started finish on the old model (their results name it), later ones run on the new one.
``reload()`` returns once the swap is done. Items preprocessed at the old input size are
resized to the new size in the dispatcher. Errors resolve the affected futures with the
exception; nothing waits forever.

Acquisition scores of a live image (``acquisition_scores``): uncertainty always; FRE and k-NN
novelty when a labeled reference exists for the version (the labeled samples' embeddings that
pool scoring wrote), cached per version and refreshed in the background when annotations change.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .acquisition import fit_fre, knn_distance, l2_normalize, uncertainty_scores
from .acquisition.index import NearestLabeled
from .config import Settings
from .errors import InvalidInput, NoActiveModel
from .images import decode_resized, resize_to
from .registry import ModelVersion, Registry
from .results import label_name
from .serving.batcher import Batcher, Item, useful_batch
from .store import Store, open_store

__all__ = ["ModelHolder", "NoveltyReference", "Scored", "acquisition_scores", "build_novelty_reference", "live_novelty"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    """One image's result: the version that produced it, its labels, probs f32 [C], embedding f32 [D]."""

    version: str
    labels: list[str]
    probs: np.ndarray
    embedding: np.ndarray

    @property
    def label(self) -> str:
        return label_name(self.labels, int(np.argmax(self.probs)))

    @property
    def confidence(self) -> float:
        return float(np.max(self.probs))

    def top_k(self, k: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(-self.probs, kind="stable")[: max(1, int(k))]
        return [(label_name(self.labels, int(i)), float(self.probs[i])) for i in order]


@dataclass(frozen=True)
class NoveltyReference:
    """What live novelty needs for one version: a fitted FRE model, the normalised labeled
    embeddings f32 [M, D] (M >= 1) and their nearest-neighbour index (the version's cached one;
    None: exact search over ``labeled``)."""

    version: str
    fre: Any
    labeled: np.ndarray
    annotation_count: int
    built_at: float
    index: NearestLabeled | None = None


def live_novelty(
    reference: NoveltyReference | None, version: str, probs: np.ndarray, embedding: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(fre f32 [N], knn f32 [N])`` of images scored by ``version`` (probs f32 [N, C], embedding
    f32 [N, D]) against a labeled ``reference``; ``(None, None)`` without a reference of that version
    and embedding width."""
    if reference is None or reference.version != version or embedding.ndim != 2 or embedding.shape[1] != reference.labeled.shape[1]:
        return None, None
    x = l2_normalize(np.array(embedding, dtype=np.float32, copy=True))
    predicted = np.argmax(probs, axis=1).astype(np.int64)
    fre = np.asarray(reference.fre.score(x, predicted), dtype=np.float32)
    if reference.index is not None:  # the version's cached index (approximate above its threshold)
        return fre, np.clip(1.0 - reference.index.search(x)[0], 0.0, 2.0).astype(np.float32)
    return fre, np.asarray(knn_distance(x, reference.labeled), dtype=np.float32)


def acquisition_scores(scored: Scored, reference: NoveltyReference | None = None) -> dict[str, float | None]:
    """``{"entropy", "margin", "least_confidence", "fre", "knn"}`` of one scored image.

    Uncertainty comes from the probabilities; ``fre`` and ``knn`` need a ``reference`` of the same
    version (else they are ``None``).
    """
    unc = uncertainty_scores(scored.probs[None, :].astype(np.float32, copy=False))
    out: dict[str, float | None] = {k: float(v[0]) for k, v in unc.items()}
    fre, knn = live_novelty(reference, scored.version, scored.probs[None, :], scored.embedding[None, :])
    out["fre"] = None if fre is None else float(fre[0])
    out["knn"] = None if knn is None else float(knn[0])
    return out


def build_novelty_reference(settings: Settings, store: Store, mv: ModelVersion, annotation_count: int = -1) -> NoveltyReference | None:
    """The labeled reference of version ``mv`` in a workspace: the labeled samples' embeddings that
    pool scoring wrote (normalised f32 [M, D]) and a class-aware FRE fitted on them; ``None`` when
    no labeled sample has an embedding for it."""
    from .scoring import embedding_file, labeled_reference, novelty_cache

    emb_file = embedding_file(settings, mv)
    try:
        ids, emb, classes = labeled_reference(store, mv, emb_file)
    finally:
        emb_file.close()
    if len(emb) == 0:
        return None
    labeled = l2_normalize(np.ascontiguousarray(emb, dtype=np.float32))
    fre = fit_fre(labeled, classes, max(len(mv.labels), int(classes.max()) + 1))
    index = novelty_cache(settings, mv).index(ids, labeled)  # the version's cached index: loaded, or extended by new labels
    return NoveltyReference(mv.version, fre, labeled, annotation_count, time.time(), index)


@dataclass
class _Loaded:
    """One model version compiled at each dispatch batch size (static shapes; the batch of n
    images runs on the smallest that fits, so a lone request does not pay for a padded batch)."""

    engines: dict[int, Any]  # batch size -> edge_al.engine.Engine (imported lazily, after start-up)
    version: str
    labels: list[str]
    per_image_s: dict[int, float] = field(default_factory=dict)  # batch size -> seconds per image, measured at load

    @property
    def useful_batch(self) -> int:
        return useful_batch(self.per_image_s) if self.per_image_s else max(self.engines)

    @property
    def engine(self) -> Any:
        return self.engines[max(self.engines)]


def _time_per_image(
    engines: dict[int, Any], rounds: int = 7, budget_s: float = 0.5, run: Callable[[int], float] | None = None
) -> dict[int, float]:
    """Seconds per image of each compiled batch size with every infer request busy (``run``: a size's
    seconds per image in one measurement; default ``_busy_run``), the sizes in turns, at least
    ``rounds`` rounds and more within ``budget_s``.

    Every infer request busy, because that is the load batching is for: on a 2-core Zen 5 one
    request at a time ran lite0 320 px INT8 at batch 4 1.23x faster per image than at batch 1, but
    with both streams busy the server at 4 and 8 clients lost 15-20% by batching (docs/benchmarks/serve.md).
    Each size counts as the smallest size's median time per image times the median, over rounds,
    of its time relative to the smallest size's in the same round: paired ratios cancel load that
    comes and goes between rounds, and medians ignore a lucky or an unlucky run (the best run of each
    size, the rule before, let one quiet moment decide between batch 1 and 4)."""
    run = run or _busy_run(engines)
    for size in engines:
        run(size)  # warm-up
    runs: dict[int, list[float]] = {size: [] for size in engines}
    start = time.perf_counter()
    n = 0
    while n < rounds or (time.perf_counter() - start < budget_s and n < 50):
        for size in engines:
            runs[size].append(run(size))
        n += 1
    base = min(engines)
    unit = float(np.median(runs[base]))
    return {size: unit * float(np.median(np.asarray(runs[size]) / np.asarray(runs[base]))) for size in engines}


def _busy_run(engines: dict[int, Any]) -> Callable[[int], float]:
    """``size -> seconds per image`` of zeros through every infer request of that size's engine at
    once, about the same number of images for every size."""
    import openvino as ov

    queues = {size: ov.AsyncInferQueue(eng.compiled, max(1, int(eng.nireq))) for size, eng in engines.items()}
    inputs = {size: np.zeros((size, eng.size[1], eng.size[0], 3), np.uint8) for size, eng in engines.items()}
    per_run = max(engines) * max(len(q) for q in queues.values())

    def run(size: int) -> float:
        q, batches = queues[size], max(1, per_run // size)
        t0 = time.perf_counter()
        for _ in range(batches):
            q.start_async({0: inputs[size]})
        q.wait_all()
        return (time.perf_counter() - t0) / (batches * size)

    return run


class _Runners:
    """The dispatcher thread's ``AsyncRunner`` per batch size of one loaded version."""

    def __init__(self, loaded: _Loaded, callback: Any, nireq: int | None) -> None:
        self.loaded = loaded
        self.by_size = {size: eng.runner(callback, nireq) for size, eng in sorted(loaded.engines.items())}
        self.slots = max(1, self.by_size[max(self.by_size)].nireq)

    def pick(self, n: int) -> Any:
        return next(r for size, r in self.by_size.items() if size >= n)

    def wait_all(self) -> None:
        for r in self.by_size.values():
            r.wait_all()


class ModelHolder:
    """The active model, compiled after start-up, behind a batching dispatcher thread."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        device: str = "CPU",
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        batching: bool = True,
        adaptive: bool = True,
        poll_s: float = 2.0,
        nireq: int | None = None,
        batch_sizes: tuple[int, ...] | None = None,
        store: Store | None = None,
        novelty: bool = True,
    ) -> None:
        if not isinstance(max_batch, int) or not 1 <= max_batch <= 256:
            raise InvalidInput(f"The 'max_batch' parameter must be an int in [1, 256]. Got {max_batch!r} instead.")
        if not 0 <= float(max_wait_ms) <= 1000:
            raise InvalidInput(f"The 'max_wait_ms' parameter must be a number in [0, 1000]. Got {max_wait_ms!r} instead.")
        if not float(poll_s) > 0:
            raise InvalidInput(f"The 'poll_s' parameter must be a number > 0. Got {poll_s!r} instead.")
        self.settings = settings
        self.registry = registry
        self.device = device
        self.batching = bool(batching)
        self.max_batch = int(max_batch) if self.batching else 1
        self.max_wait_s = float(max_wait_ms) / 1000.0 if self.batching else 0.0
        self.poll_s = float(poll_s)
        self.nireq = nireq
        if batch_sizes is None:  # powers of two up to max_batch, and max_batch
            sizes = {self.max_batch} | {1 << k for k in range(9) if (1 << k) <= self.max_batch}
        else:
            sizes = {int(b) for b in batch_sizes if 1 <= int(b) <= self.max_batch} | {self.max_batch}
        self.batch_sizes = tuple(sorted(sizes))
        self._store = store
        self.novelty = bool(novelty)  # False: uncertainty only, no store read (a scoring box has none)
        self._batcher = Batcher(self.max_batch, self.max_wait_s, adaptive=adaptive)
        self._current: _Loaded | None = None
        self._pending: _Loaded | None = None
        self._swapped = threading.Condition()
        self._swap_count = 0
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pid: int | None = None
        self._closed = False
        self._failed_version: str | None = None
        self._prepared: _Loaded | None = None  # compiled by prepare(), not yet active
        self._start_lock = threading.Lock()
        self._slots = 1  # infer requests of the loaded model (set by the dispatcher)
        self._novelty: dict[str, NoveltyReference] = {}
        self._novelty_lock = threading.Lock()
        self._novelty_building: set[str] = set()
        self._novelty_checked: dict[str, float] = {}

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Compile the active model (if any) and start the dispatcher and the registry watcher.

        Call it after start-up in the serving process (after any fork: never before). A holder
        used in a forked child restarts itself there on first use.
        """
        with self._start_lock:
            if self._pid == os.getpid() and self._threads:
                return
            self._reset_after_fork()
            self._pid = os.getpid()
            self._stop.clear()
            self._fail_queued(NoActiveModel("The scoring service restarted."))  # and the stop marker
            self._batcher.stopped.clear()
            self._closed = False
            try:
                self._load_active(direct=True)
            except Exception:
                log.exception("could not load the active model at start-up; the watcher will retry")
            dispatcher = threading.Thread(target=self._dispatch_loop, name="edge-al-dispatcher", daemon=True)
            watcher = threading.Thread(target=self._watch_loop, name="edge-al-model-watcher", daemon=True)
            self._threads = [dispatcher, watcher]
            dispatcher.start()
            watcher.start()

    def _reset_after_fork(self) -> None:
        if self._pid is not None and self._pid != os.getpid():
            # threads and compiled models of the parent do not exist (or hang) in the child
            self._threads = []
            self._current = self._pending = None
            self._batcher = Batcher(self.max_batch, self.max_wait_s, adaptive=self._batcher.adaptive)
            self._swapped = threading.Condition()
            self._reload_lock = threading.Lock()
            self._novelty_lock = threading.Lock()
            self._novelty = {}
            self._novelty_building = set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the threads; queued requests fail with ``NoActiveModel`` ("shutting down")."""
        self._closed = True
        self._stop.set()
        self._batcher.stop()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)
        self._threads = []
        self._fail_queued(NoActiveModel("The scoring service is shutting down."))

    def __enter__(self) -> ModelHolder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state ---------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """A model is loaded and the dispatcher runs."""
        return self._current is not None and bool(self._threads) and self._threads[0].is_alive()

    @property
    def version(self) -> str | None:
        cur = self._current
        return cur.version if cur else None

    @property
    def labels(self) -> list[str]:
        cur = self._current
        return list(cur.labels) if cur else []

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the current model input; ``NoActiveModel`` while none is loaded."""
        cur = self._current
        if cur is None:
            raise NoActiveModel("No model is loaded yet: publish and promote a model version first.")
        w, h = cur.engine.size
        return (int(w), int(h))

    def describe(self) -> dict[str, Any]:
        cur = self._current
        return {
            "version": cur.version if cur else None,
            "engine": cur.engine.describe() if cur else None,
            "batching": self.batching,
            "adaptive": self._batcher.adaptive,
            "max_batch": self.max_batch,
            "batch_sizes": list(self.batch_sizes),
            "max_wait_ms": self.max_wait_s * 1000.0,
        }

    def stats(self) -> dict[str, Any]:
        """Counters for /metrics (``Batcher.stats``), the served version and the swap count."""
        return {"version": self.version, **self._batcher.stats(self._slots), "swaps": self._swap_count}

    # -- requests ------------------------------------------------------------------------------
    def preprocess(self, data: bytes, width: int | None = None, height: int | None = None) -> np.ndarray:
        """Encoded image -> u8 [H, W, 3] BGR at the current model size (reduced-scale JPEG decode
        when the caller knows the source size from ``images.probe``)."""
        return decode_resized(data, self.size, width, height)

    def submit(self, image: np.ndarray) -> Future[Scored]:
        """Queue one u8 [H, W, 3] BGR image (any size: resized to the model's); returns its future."""
        self._ensure_started()
        if self._current is None and self._pending is None:
            raise NoActiveModel("No model is loaded yet: publish and promote a model version first.")
        fut: Future[Scored] = Future()
        self._batcher.put(Item(image, fut))
        return fut

    def score(self, images: list[np.ndarray], timeout: float = 30.0) -> list[Scored]:
        """Score u8 [H, W, 3] BGR images (normally already at ``self.size``), in order.

        Raises the inference error of a failed image, ``NoActiveModel`` while no model is loaded,
        ``TimeoutError`` when the results do not come within ``timeout`` seconds.
        """
        futures = [self.submit(img) for img in images]
        deadline = time.monotonic() + float(timeout)
        out = []
        try:
            for fut in futures:
                out.append(fut.result(timeout=max(0.0, deadline - time.monotonic())))
        except FutureTimeout:
            for fut in futures:
                fut.cancel()
            raise TimeoutError(f"Scoring did not finish within {timeout:g} s (queue depth {self._batcher.queue.qsize()}).") from None
        return out

    def _ensure_started(self) -> None:
        if self._pid is None or self._pid != os.getpid():  # first use, or first use in a forked child
            self.start()
        elif self._closed:
            raise NoActiveModel("The scoring service is shutting down.")

    # -- reload --------------------------------------------------------------------------------
    def reload(self, timeout: float = 60.0) -> bool:
        """Load the registry's active version if it differs from the loaded one; True if swapped.

        Compiles on the calling thread (never the dispatcher's), then waits until the dispatcher
        has swapped between batches, so requests submitted after this returns run on the new model.
        """
        return self._load_active(direct=False, timeout=timeout)

    def prepare(self, mv: ModelVersion) -> None:
        """Compile ``mv`` now, before it is active (raises what compiling raises); the next reload
        to that version swaps it in without compiling again. ``Registry.promote(v, load=prepare)``
        so a version that cannot load is never activated."""
        with self._reload_lock:
            self._prepared = None
            self._prepared = self._compile(mv)

    def _compile(self, mv: ModelVersion) -> _Loaded:
        from .engine import Engine  # lazily: openvino is loaded after start-up (and after fork)

        engines = {size: Engine(mv.xml, device=self.device, batch=size) for size in self.batch_sizes}
        loaded = _Loaded(engines, mv.version, list(engines[self.max_batch].labels or mv.labels))
        if len(engines) > 1:
            loaded.per_image_s = _time_per_image(engines)
            log.info("model %s: seconds per image by batch size %s; batches up to %d", mv.version,
                     {b: round(t, 6) for b, t in loaded.per_image_s.items()}, loaded.useful_batch)  # fmt: skip
        return loaded

    def _load_active(self, *, direct: bool, timeout: float = 60.0, watcher: bool = False) -> bool:
        with self._reload_lock:
            version = self.registry.active_version()
            cur = self._current
            if version is None or (cur is not None and cur.version == version):
                return False
            if watcher and version == self._failed_version:
                return False  # tried and failed: the watcher waits for another version (reload() retries)
            prepared, self._prepared = self._prepared, None
            try:
                loaded = prepared if prepared is not None and prepared.version == version else self._compile(self.registry.get(version))
            except Exception:
                self._failed_version = version
                raise
            self._failed_version = None
            engine = loaded.engine
            dispatcher_alive = bool(self._threads) and self._threads[0].is_alive()
            if direct or not dispatcher_alive:
                self._current = loaded
                self._swap_count += 1
                log.info("model %s loaded (%s)", version, engine.describe())
                return True
            with self._swapped:
                self._pending = loaded
                self._batcher.wake()
                if not self._swapped.wait_for(lambda: self._pending is None, timeout=timeout):
                    raise TimeoutError(f"The dispatcher did not swap to {version} within {timeout:g} s.")
            log.info("model %s swapped in (%s)", version, engine.describe())
            return True

    def _watch_loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._load_active(direct=False, watcher=True)
            except Exception:
                log.exception("model reload failed; keeping %s", self.version)

    # -- the dispatcher ------------------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        runners: _Runners | None = None
        carry: Item | None = None
        b = self._batcher
        try:
            while not self._stop.is_set() and not b.stopped.is_set():
                if (
                    self._pending is not None
                    or (runners is None and self._current is not None)
                    or (runners is not None and runners.loaded is not self._current)
                ):
                    runners = self._swap(runners)
                if runners is not None:
                    self._slots = runners.slots
                    b.wait_slot(runners.slots)  # so the batch fills while every request is busy
                first = carry if carry is not None else b.take(timeout=0.1)
                carry = None
                if first is None:
                    continue
                if runners is None or self._pending is not None:
                    if self._pending is not None or self._current is not None:
                        carry = first  # swap first, then serve it
                        continue
                    self._resolve_error([first], NoActiveModel("No model is loaded yet: publish and promote a model version first."))
                    continue
                self._run(runners, b.fill(first, runners.slots))
        except Exception as exc:  # never hang the callers
            log.exception("the dispatcher stopped")
            self._fail_queued(exc)
        finally:
            if runners is not None:
                runners.wait_all()

    def _swap(self, runners: _Runners | None) -> _Runners | None:
        if runners is not None:
            runners.wait_all()  # batches in flight finish (on the old model) before it goes
        with self._swapped:
            if self._pending is not None:
                self._current = self._pending
                self._pending = None
                self._swap_count += 1
            loaded = self._current
            new = _Runners(loaded, self._on_done, self.nireq) if loaded is not None else None
            if loaded is not None:
                self._batcher.cap = loaded.useful_batch
            self._swapped.notify_all()
        return new

    def _run(self, runners: _Runners, batch: list[Item]) -> None:
        w, h = runners.loaded.engine.size
        images = np.empty((len(batch), h, w, 3), dtype=np.uint8)
        good: list[Item] = []
        for item in batch:
            try:
                img = item.image
                if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3):
                    raise InvalidInput(
                        f"Images must be uint8 [H, W, 3] BGR. Got {getattr(img, 'dtype', type(img).__name__)} "
                        f"{list(getattr(img, 'shape', []))} instead."
                    )
                images[len(good)] = img if img.shape[:2] == (h, w) else resize_to(img, (w, h))
                good.append(item)
            except Exception as exc:
                self._resolve_error([item], exc)
        if not good:
            return
        self._batcher.started()
        try:
            runners.pick(len(good)).submit(images[: len(good)], (good, runners.loaded, time.perf_counter()))
        except Exception as exc:
            self._batcher.release()
            self._resolve_error(good, exc)

    def _on_done(self, tag: Any, probs: np.ndarray | None, embs: np.ndarray | None, error: BaseException | None) -> None:
        items, loaded, t0 = tag
        self._batcher.release()
        if error is None:
            self._batcher.record(len(items), time.perf_counter() - t0)
        if error is not None or probs is None or embs is None:
            self._resolve_error(items, error if isinstance(error, Exception) else RuntimeError(str(error)))
            return
        for i, item in enumerate(items):
            if not item.future.done():
                item.future.set_result(Scored(loaded.version, loaded.labels, probs[i], embs[i]))

    def _resolve_error(self, items: list[Item], exc: BaseException) -> None:
        self._batcher.record_errors(len(items))
        for item in items:
            fut = item.future
            if fut.done():
                continue
            if not fut.running():
                fut.set_running_or_notify_cancel()
            if not fut.done():
                fut.set_exception(exc)

    def _fail_queued(self, exc: BaseException) -> None:
        self._resolve_error(self._batcher.drain(), exc)

    # -- live acquisition scores ---------------------------------------------------------------
    def acquisition_scores(self, scored: Scored, refresh_s: float = 30.0) -> dict[str, float | None]:
        """Uncertainty and, when a labeled reference of the version exists, FRE and k-NN novelty.

        The reference is built in the background (never on the request's time) and rebuilt when
        the annotation count changed, checked at most every ``refresh_s`` seconds.
        """
        if not self.novelty:
            return acquisition_scores(scored)
        ref = self._novelty.get(scored.version)
        now = time.monotonic()
        if now - self._novelty_checked.get(scored.version, -1e9) >= refresh_s:
            self._novelty_checked[scored.version] = now
            self._refresh_novelty(scored.version, ref)
        return acquisition_scores(scored, ref)

    def novelty_reference(self, version: str) -> NoveltyReference | None:
        return self._novelty.get(version)

    def _refresh_novelty(self, version: str, ref: NoveltyReference | None) -> None:
        with self._novelty_lock:
            if version in self._novelty_building:
                return
            self._novelty_building.add(version)
        t = threading.Thread(target=self._build_novelty, args=(version, ref), name="edge-al-novelty", daemon=True)
        t.start()

    def build_novelty(self, version: str) -> NoveltyReference | None:
        """Build (synchronously) the novelty reference of a version; None when there is no labeled
        sample with a stored embedding for it."""
        with self._novelty_lock:
            self._novelty_building.add(version)
        self._build_novelty(version, None)
        return self._novelty.get(version)

    def _build_novelty(self, version: str, old: NoveltyReference | None) -> None:
        try:
            if self._store is None:
                self._store = open_store(self.settings)
            store = self._store
            count = store.annotation_count()
            if old is not None and old.annotation_count == count:
                return
            ref = build_novelty_reference(self.settings, store, self.registry.get(version), count)
            if ref is None:
                self._novelty.pop(version, None)
                return
            self._novelty[version] = ref
        except Exception:
            log.exception("could not build the novelty reference of %s; serving uncertainty only", version)
        finally:
            with self._novelty_lock:
                self._novelty_building.discard(version)
