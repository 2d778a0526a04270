"""Offline batch scoring for scripts: a published model version in, typed results out.

No store and no ingest: images are read, checked and decoded exactly as ``POST /v1/score``
does (``images.probe`` then ``images.decode_resized``), run through the same ``Engine``, and
read back through ``edge_al.results``; novelty uses the service's code
(``dispatch.live_novelty``) against the version's labeled reference when its workspace has one.

::

    from edge_al.predict import Predictor

    with Predictor.load("v0003", home="edge-al-home") as model:      # or a version folder, or None: the active one
        r = model.predict("part.jpg")                                 # a path, bytes or a u8 [H, W, 3] BGR array
        print(r.label, r.confidence, r.top_k, r.scores["margin"])
        for f in model.predict_files(["night/", "extra/*.png"]):      # streamed, decode overlaps inference
            print(f.path, f.error or f.prediction.label)

``stream_files`` is the pipeline shared with ``edge-al predict`` and the Ray actors: loader
threads read and decode chunks of paths while the calling thread owns the engine's
``AsyncInferQueue`` (``Engine.stream``); results come back in input order, one engine batch at
a time, with the reason for each path that could not be read or decoded.
"""

from __future__ import annotations

import glob
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import Settings, load_settings
from .errors import EdgeALError, InvalidInput, NoActiveModel, NotFound
from .images import decode_resized, probe, resize_to
from .pool import IMAGE_SUFFIXES, expand_paths
from .registry import ModelVersion, Registry
from .results import Prediction, Predictions

__all__ = ["FileResult", "Predictor", "expand_inputs", "load_image", "resolve_model", "stream_files"]

_VERSION_RE = re.compile(r"^v\d{4,}$")
_CHUNK_IMAGES = 64  # images a loader task reads: a few engine batches (as pool scoring does)
_QUEUED_PER_REQUEST = 3  # infer requests per optimal one, so no stream idles (scoring.py measured +20%)
ImageInput = str | Path | bytes | bytearray | memoryview | np.ndarray


# -- which model ---------------------------------------------------------------------------------
def _version_folder(path: Path) -> ModelVersion:
    import json

    meta_path = path / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    return ModelVersion(str(meta.get("version") or path.name), path, meta)


def resolve_model(model: str | Path | None, settings: Settings) -> ModelVersion:
    """The version ``model`` names: ``None`` (the registry's active one), a version name such as
    ``v0003`` (in ``settings``' registry), a version folder holding ``model.xml``, or a registry
    folder (its active version). Creates nothing."""
    if model is None or str(model) == "active":
        return _active(settings.registry_dir)
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "model.xml").exists():
            return _version_folder(path.resolve())
        if (path / "registry.json").exists():
            return _active(path)
    if path.is_file() and path.name == "model.xml":
        return _version_folder(path.resolve().parent)
    if _VERSION_RE.match(str(model)):
        if not settings.registry_dir.is_dir():
            raise NotFound(f"There is no model registry at {settings.registry_dir}: pass --home/--models, or a version folder.")
        return Registry(settings.registry_dir).get(str(model))
    raise InvalidInput(
        f"The model must be a version name (v0003), a version folder holding model.xml, or a registry folder. Got {str(model)!r} instead."
    )


def _active(root: Path) -> ModelVersion:
    if not root.is_dir():
        raise NoActiveModel(f"There is no model registry at {root}: pass --home/--models, or a version folder.")
    mv = Registry(root).active()
    if mv is None:
        raise NoActiveModel(f"No model version is active in {root}: promote one, or name a version.")
    return mv


def _reference(settings: Settings, mv: ModelVersion) -> Any:
    """The version's labeled novelty reference when its workspace has one (else ``None``):
    the service's ``dispatch.build_novelty_reference``. Opens the store only if it exists."""
    from .dispatch import build_novelty_reference
    from .store import open_store

    inside = mv.path.parent.resolve() == settings.registry_dir.resolve()
    emb = settings.embeddings_dir / f"{mv.version}.f16"
    has_store = settings.db_url is not None or settings.db_path.exists()
    if not (inside and has_store and emb.exists() and mv.meta.get("embedding_dim")):
        return None
    store = open_store(settings)
    try:
        return build_novelty_reference(settings, store, mv, store.annotation_count())
    finally:
        store.close()


# -- which images --------------------------------------------------------------------------------
def expand_inputs(inputs: Iterable[str | Path]) -> Iterator[tuple[str, str | None]]:
    """Files, folders (recursive, image suffixes), globs (``**`` recursive), list files
    (``@list.txt``, or any ``.txt``/``.lst``/``.list`` file: one path a line, relative to the list)
    and pyarrow filesystem URIs (``scheme://...``, passed through).

    Yields ``(path, problem)`` in order; ``problem`` says why a path is unusable, else ``None``.
    """
    for raw in inputs:
        text = str(raw)
        if "://" in text:
            yield text, None
        elif text.startswith("@"):
            yield from _expand_list(Path(text[1:]).expanduser())
        elif not Path(text).expanduser().exists() and glob.has_magic(text):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            if not matches:
                yield text, "no file matches the pattern"
            for m in matches:
                if not Path(m).is_dir():
                    yield from ((str(p), problem) for p, problem in expand_paths([m]))
        elif Path(text).expanduser().is_dir():
            yield from ((p, None) for p in _walk(Path(text).expanduser().resolve()))
        else:
            yield from ((str(p), problem) for p, problem in expand_paths([text]))


def _walk(root: Path) -> list[str]:
    """The image files under ``root`` (recursive, ``pool.IMAGE_SUFFIXES``), sorted by path parts.

    One ``scandir`` per folder and no per-file ``resolve``: on 10,000 files this took 0.1 s
    where ``pool.expand_paths`` took 1 s, a quarter of predict's whole run on small JPEGs."""
    out: list[str] = []
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir():
                    stack.append(entry.path)
                elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                    out.append(entry.path)
    out.sort(key=lambda p: p.split(os.sep))
    return out


def _expand_list(path: Path) -> Iterator[tuple[str, str | None]]:
    if not path.is_file():
        yield str(path), "no such list file"
        return
    base = path.resolve().parent
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            q = line if "://" in line or Path(line).expanduser().is_absolute() else str(base / line)
            yield from expand_inputs([q])


# -- decoding (the service's path) ---------------------------------------------------------------
def read_bytes(path: str, max_bytes: int) -> bytes:
    """The file's bytes (a local path or a pyarrow filesystem URI); ``ImageError``-style
    ``OSError``/``EdgeALError`` when it cannot be read or is over ``max_bytes``."""
    from .errors import ImageTooLarge

    if "://" in path:
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        with filesystem.open_input_stream(inner) as f:
            data: bytes = f.read(max_bytes + 1)
    else:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size > max_bytes:  # read(max_bytes + 1) would allocate max_bytes per call
                raise ImageTooLarge(f"The file has {os.fstat(fh.fileno()).st_size:,} bytes; the limit is {max_bytes:,}.")
            data = fh.read()
    if len(data) > max_bytes:
        raise ImageTooLarge(f"The file has more than {max_bytes:,} bytes, the limit.")
    return data


def load_image(data: bytes, size: tuple[int, int], *, max_pixels: int, max_bytes: int) -> np.ndarray:
    """Encoded image -> u8 [size[1], size[0], 3] BGR, as ``POST /v1/score`` does it: probe the
    header (limits, truncation), then a reduced-scale decode where the source is larger, then resize."""
    info = probe(data, max_pixels=max_pixels, max_bytes=max_bytes, fast_jpeg=True)
    return decode_resized(data, size, info.width, info.height)


def _load_chunk(paths: Sequence[str], size: tuple[int, int], settings: Settings) -> tuple[np.ndarray, dict[int, str]]:
    """``(images u8 [n, H, W, 3], {position: reason})``: a failed image is left black."""
    w, h = size
    out = np.zeros((len(paths), h, w, 3), dtype=np.uint8)
    failures: dict[int, str] = {}
    for i, path in enumerate(paths):
        try:
            out[i] = load_image(
                read_bytes(path, settings.max_file_bytes), size, max_pixels=settings.max_pixels, max_bytes=settings.max_file_bytes
            )
        except EdgeALError as exc:
            failures[i] = str(exc)
        except OSError as exc:
            failures[i] = f"cannot read the file: {exc.strerror or exc}"
    return out, failures


def _ahead(tasks: Iterator[Callable[[], Any]], executor: ThreadPoolExecutor, depth: int) -> Iterator[Any]:
    """Run ``tasks`` on ``executor`` with at most ``depth`` in flight; yield their results in order."""
    pending: deque[Future[Any]] = deque()
    for task in tasks:
        pending.append(executor.submit(task))
        if len(pending) >= depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def stream_files(
    engine: Any, paths: Iterable[str], settings: Settings, *, workers: int | None = None, reference: Any = None
) -> Iterator[tuple[list[str], Predictions, dict[int, str]]]:
    """Score ``paths`` in order: yields ``(paths [b], Predictions [b], {position: reason})`` per
    engine batch; a path with a reason was not scored (its row in ``Predictions`` is meaningless).

    Memory is bounded by ``workers + 2`` chunks of 64 images in flight, whatever the path count.
    """
    from .dispatch import live_novelty

    chunk = engine.batch * max(1, _CHUNK_IMAGES // engine.batch)
    n_workers = workers or max(1, min(4, os.cpu_count() or 1))

    def load(part: list[str]) -> Callable[[], tuple[list[str], np.ndarray, dict[int, str]]]:
        return lambda: (part, *_load_chunk(part, engine.size, settings))

    def chunks() -> Iterator[Callable[[], tuple[list[str], np.ndarray, dict[int, str]]]]:
        part: list[str] = []
        for p in paths:
            part.append(p)
            if len(part) == chunk:
                yield load(part)
                part = []
        if part:
            yield load(part)

    def batches(loaded: Iterator[tuple[list[str], np.ndarray, dict[int, str]]]) -> Iterator[tuple[Any, np.ndarray]]:
        for part, images, failures in loaded:
            for s in range(0, len(part), engine.batch):
                bad = {i - s: r for i, r in failures.items() if s <= i < s + engine.batch}
                yield (part[s : s + engine.batch], bad), images[s : s + engine.batch]

    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="edge-al-predict-load") as ex:
        loaded = _ahead(chunks(), ex, n_workers + 2)
        for (part, bad), probs, embs in engine.stream(batches(loaded), nireq=_QUEUED_PER_REQUEST * int(engine.nireq)):
            preds = engine.wrap(probs, embs)
            fre, knn = live_novelty(reference, preds.version, probs, embs)
            yield part, preds.with_novelty(fre, knn), bad


# -- the Python API ------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileResult:
    """One path's outcome: its ``prediction``, or the ``error`` that kept it from being scored."""

    path: str
    prediction: Prediction | None
    error: str | None = None


class Predictor:
    """A published model version compiled once, for scripts: ``predict`` images, ``predict_files`` paths.

    Build it with ``Predictor.load``. ``novelty``: compute FRE and k-NN novelty against the
    version's labeled reference when its workspace has one (else those scores are ``None``).
    """

    def __init__(
        self,
        version: ModelVersion,
        *,
        settings: Settings | None = None,
        device: str = "CPU",
        batch: int = 8,
        novelty: bool = True,
        threads: int | None = None,
        precision: str | None = None,
    ) -> None:
        from .engine import Engine

        self.model_version = version
        self.settings = settings or load_settings()
        self.engine = Engine(version.xml, device=device, batch=batch, threads=threads, precision=precision, version=version.version)
        self.reference = _reference(self.settings, version) if novelty else None

    @classmethod
    def load(
        cls, model: str | Path | None = None, *, home: str | Path | None = None, models: str | Path | None = None, **options: Any
    ) -> Predictor:
        """``model``: ``None`` (the active version), a version name, a version folder or a registry
        folder (see ``resolve_model``); ``home``/``models`` as the CLI's ``--home``/``--models``;
        ``options``: ``device``, ``batch``, ``novelty``, ``threads``, ``precision``."""
        settings = load_settings(home, models)
        return cls(resolve_model(model, settings), settings=settings, **options)

    @property
    def version(self) -> str:
        return self.model_version.version

    @property
    def labels(self) -> list[str]:
        return list(self.engine.labels)

    def close(self) -> None:
        """Nothing to release beyond the compiled model, which goes with the object."""

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def image(self, item: ImageInput) -> np.ndarray:
        """One input as the u8 [H, W, 3] BGR array at the model size the engine takes.

        A path or URI is read; bytes are probed and decoded as the service does; an array must be
        u8 [H, W, 3] BGR (any size: resized). Raises ``ImageError``/``InvalidInput`` otherwise."""
        s = self.settings
        if isinstance(item, (str, Path)):
            try:
                data = read_bytes(str(item), s.max_file_bytes)
            except OSError as exc:
                raise InvalidInput(f"Cannot read {item}: {exc.strerror or exc}. Expected a readable image file.") from None
            return load_image(data, self.engine.size, max_pixels=s.max_pixels, max_bytes=s.max_file_bytes)
        if isinstance(item, (bytes, bytearray, memoryview)):
            return load_image(bytes(item), self.engine.size, max_pixels=s.max_pixels, max_bytes=s.max_file_bytes)
        if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 3 and item.shape[2] == 3:
            return resize_to(item, self.engine.size)
        raise InvalidInput(
            f"An image must be a path, encoded bytes or a uint8 [H, W, 3] BGR array. Got {type(item).__name__} "
            f"{getattr(item, 'dtype', '')} {list(getattr(item, 'shape', []))} instead."
        )

    def predict_arrays(self, images: np.ndarray) -> Predictions:
        """u8 [N, H, W, 3] BGR at the model size -> ``Predictions`` with novelty where there is a reference."""
        from .dispatch import live_novelty

        preds = self.engine.predict(images)
        return preds.with_novelty(*live_novelty(self.reference, preds.version, preds.probs, preds.embedding))

    def predict(
        self, images: ImageInput | Sequence[ImageInput], *, top_k: int = 3, embedding: bool = False
    ) -> Prediction | list[Prediction]:
        """One image (a path, bytes or a u8 [H, W, 3] array) -> a ``Prediction``; a sequence of them,
        or a u8 [N, H, W, 3] array -> a list, in order. ``embedding``: keep each f32 [D] embedding."""
        single = isinstance(images, (str, Path, bytes, bytearray, memoryview)) or (isinstance(images, np.ndarray) and images.ndim == 3)
        items: Sequence[Any] = [images] if single else images  # type: ignore[assignment]
        arrays = [self.image(x) for x in items]
        if not arrays:
            return []
        sources = [str(x) if isinstance(x, (str, Path)) else None for x in items]
        rows = self.predict_arrays(np.stack(arrays)).rows(top_k=top_k, embedding=embedding, sources=sources)
        return rows[0] if single else rows

    def predict_files(
        self, inputs: Iterable[str | Path], *, top_k: int = 3, embedding: bool = False, workers: int | None = None
    ) -> Iterator[FileResult]:
        """Stream files, folders, globs and list files (``expand_inputs``): one ``FileResult`` per
        path, in order; an unreadable or undecodable file is a result with an ``error``, never an exception."""
        problems: dict[str, str] = {}

        def good() -> Iterator[str]:
            for path, problem in expand_inputs(inputs):
                if problem is None:
                    yield path
                else:
                    problems[path] = problem

        for part, preds, bad in stream_files(self.engine, good(), self.settings, workers=workers, reference=self.reference):
            while problems:
                path, problem = problems.popitem()
                yield FileResult(path, None, problem)
            rows = preds.rows(top_k=top_k, embedding=embedding, sources=part)
            for i, path in enumerate(part):
                yield FileResult(path, None, bad[i]) if i in bad else FileResult(path, rows[i])
        for path, problem in problems.items():
            yield FileResult(path, None, problem)
