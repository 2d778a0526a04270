"""The one seam around OpenVINO: the only module in ``edge_al`` that imports it.

One ``ov.Core`` per process. A model is reshaped to a static batch (faster than dynamic on
CPU; the last batch is padded), compiled with the THROUGHPUT hint, and the streams, infer
requests and inference precision the runtime chose are read back and reported.

Two ways in:
- ``Engine.stream(batches)``: the calling thread is the single producer that owns an
  ``AsyncInferQueue``; results come back in input order. Used by pool scoring.
- ``Engine.infer(images)``: synchronous, serialised by a lock (gates, feature caches, tests; a call of
  more than one batch runs on every stream through ``stream``);
  ``Engine.predict(images)`` is the same call returning a typed ``Predictions`` (label names,
  top-k, uncertainty, the model version: ``edge_al.results``).
The build side (``export``) builds models in memory and gates them through this same ``Engine``
(it accepts an ``ov.Model`` as well as an IR path) and reads IRs with :func:`read_ir`: no other
module reads or compiles a model. Never share one InferRequest or queue between threads (DESIGN.md field notes).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import openvino as ov

from .errors import InvalidInput
from .results import Prediction, Predictions

__all__ = [
    "AsyncRunner",
    "Engine",
    "ModelInfo",
    "Prediction",
    "Predictions",
    "available_devices",
    "get_core",
    "read_ir",
    "read_model_info",
    "resolve_device",
]

T = TypeVar("T")
_core: ov.Core | None = None
_core_pid: int | None = None
_core_lock = threading.Lock()


def get_core() -> ov.Core:
    """The process's single ``ov.Core`` (created lazily, and again in a forked child)."""
    global _core, _core_pid
    with _core_lock:
        if _core is None or _core_pid != os.getpid():
            _core = ov.Core()
            _core_pid = os.getpid()
        return _core


def read_ir(xml: str | Path) -> ov.Model:
    """The ``ov.Model`` of an IR file (not compiled): for the build side to compose or inspect."""
    return get_core().read_model(str(xml))


def available_devices() -> list[str]:
    return list(get_core().available_devices)


def resolve_device(requested: str, available: list[str] | None = None) -> str:
    """Turn CPU / GPU / GPU.1 / AUTO into a device string the runtime accepts here.

    AUTO is built from the devices present (GPUs first, then CPU), since ``AUTO:GPU,CPU``
    raises on a host without the GPU plugin. A named device that is absent is an error that
    lists what is present.
    """
    avail = available if available is not None else available_devices()
    req = (requested or "AUTO").strip().upper()
    if req == "AUTO":
        ordered = [d for d in avail if d.startswith("GPU")] + [d for d in avail if d == "CPU"]
        if not ordered:
            raise InvalidInput(f"No usable OpenVINO device: available devices are {avail or '(none)'}.")
        return "AUTO:" + ",".join(ordered) if len(ordered) > 1 else ordered[0]
    if req == "GPU" and any(d.startswith("GPU") for d in avail):
        return "GPU" if "GPU" in avail else next(d for d in avail if d.startswith("GPU"))
    if req in avail:
        return req
    raise InvalidInput(
        f"Device {requested!r} is not available here: available devices are {', '.join(avail) or '(none)'}. Use --device CPU or AUTO."
    )


@dataclass(frozen=True)
class ModelInfo:
    """What the IR says about itself (``rt_info["model_info"]``)."""

    labels: list[str]
    width: int
    height: int
    version: str
    raw: dict[str, Any]


def _rt_value(model: ov.Model, key: str) -> Any:
    if not model.has_rt_info(["model_info", key]):
        return None
    value = model.get_rt_info(["model_info", key])
    text = value.astype(str) if hasattr(value, "astype") else str(value)
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_model_info(model: ov.Model) -> ModelInfo:
    raw: dict[str, Any] = {}
    if model.has_rt_info(["model_info"]):
        info = model.get_rt_info()["model_info"]
        keys = info.keys() if isinstance(info, dict) else info.astype(dict).keys()
        for key in keys:
            raw[str(key)] = _rt_value(model, str(key))
    labels = raw.get("labels") or []
    if isinstance(labels, str):
        labels = labels.split()
    shape = model.input(0).get_partial_shape()
    h = int(raw.get("input_height") or (shape[1].get_length() if shape[1].is_static else 0))
    w = int(raw.get("input_width") or (shape[2].get_length() if shape[2].is_static else 0))
    size = raw.get("input_size")
    if isinstance(size, list) and len(size) == 2:
        w, h = int(size[0]), int(size[1])
    elif isinstance(size, int):
        w = h = size
    return ModelInfo([str(x) for x in labels], w, h, str(raw.get("version") or raw.get("model_version") or ""), raw)


def _output_rows(request: ov.InferRequest, port: int | None, n: int) -> np.ndarray:
    """float32 copy of the first ``n`` rows of an output; [n, 0] for a missing (None) port."""
    if port is None:
        return np.zeros((n, 0), dtype=np.float32)
    return np.array(request.get_output_tensor(port).data[:n], dtype=np.float32)


class Engine:
    """A compiled classifier: u8 NHWC BGR batches in, (probs [N, C], embedding [N, D]) out.

    ``xml`` is an IR path or an in-memory ``ov.Model`` (copied, never changed); ``precision``
    ``"f32"`` pins the inference precision (the gates compare at f32 on CPUs that default to bf16).
    """

    def __init__(
        self,
        xml: str | Path | ov.Model,
        *,
        device: str = "CPU",
        batch: int = 8,
        hint: str = "THROUGHPUT",
        precision: str | None = None,
        nireq: int | None = None,
        threads: int | None = None,
        version: str | None = None,
    ) -> None:
        """``threads``: INFERENCE_NUM_THREADS (default: the runtime's, every core), for several
        engines sharing a box (one per Ray actor). ``version``: the model version that results
        name (default: the one in the IR's rt_info; a registry passes its folder's name)."""
        if not 1 <= int(batch) <= 1024:
            raise InvalidInput(f"The 'batch' parameter must be an int in [1, 1024]. Got {batch!r} instead.")
        core = get_core()
        if isinstance(xml, ov.Model):
            self.xml = Path(f"<in-memory {xml.get_friendly_name()}>")
            model = xml.clone()
        else:
            self.xml = Path(xml)
            model = core.read_model(self.xml)
        self.info = read_model_info(model)
        self.batch = int(batch)
        inp = model.input(0)
        shape = inp.get_partial_shape()
        if shape.rank.get_length() != 4:
            raise InvalidInput(f"{xml}: expected a 4-D u8 NHWC input. Got {shape} instead.")
        h = self.info.height or shape[1].get_length()
        w = self.info.width or shape[2].get_length()
        model.reshape({inp.get_any_name(): ov.PartialShape([self.batch, h, w, 3])})
        self.width, self.height = int(w), int(h)
        self.device = resolve_device(device)
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.version = version or self.info.version
        self.compiled = core.compile_model(model, self.device, config)
        # A backbone IR (edge-al embed) has only an embedding output: probs are then [N, 0].
        embedding_only = len(self.compiled.outputs) == 1
        self._emb_port = self._output("embedding", 0 if embedding_only else 1)
        self._probs_port: int | None = None if embedding_only else self._output("probs", 0)
        self.nireq = int(nireq or self._prop("OPTIMAL_NUMBER_OF_INFER_REQUESTS", 2))
        self.streams = self._prop("NUM_STREAMS", None)
        prec = self._prop("INFERENCE_PRECISION_HINT", "?")
        self.precision = prec.to_string() if hasattr(prec, "to_string") else str(prec)
        self.execution_devices = self._prop("EXECUTION_DEVICES", [self.device])
        self.embedding_dim = int(self.compiled.output(self._emb_port).get_partial_shape()[1].get_length())
        self.num_classes = (
            0 if self._probs_port is None else int(self.compiled.output(self._probs_port).get_partial_shape()[1].get_length())
        )
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def _output(self, name: str, fallback: int) -> int:
        for i, out in enumerate(self.compiled.outputs):
            if name in out.get_names():
                return i
        return fallback

    def _prop(self, name: str, default: Any) -> Any:
        try:
            return self.compiled.get_property(name)
        except Exception:
            return default

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    def describe(self) -> dict[str, Any]:
        return {
            "xml": str(self.xml),
            "device": self.device,
            "execution_devices": [str(d) for d in self.execution_devices],
            "batch": self.batch,
            "streams": str(self.streams),
            "infer_requests": self.nireq,
            "inference_precision": self.precision,
        }

    def _check(self, images: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (self.height, self.width, 3):
            raise InvalidInput(
                f"Images must be uint8 [N, {self.height}, {self.width}, 3]. Got {images.dtype} {list(images.shape)} instead."
            )

    def _padded(self, images: np.ndarray) -> np.ndarray:
        n = images.shape[0]
        if n == self.batch:
            return np.ascontiguousarray(images)
        out = np.zeros((self.batch, self.height, self.width, 3), dtype=np.uint8)
        out[:n] = images
        return out

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Synchronous inference of any number of images: (probs f32 [N, C], embedding f32 [N, D]).

        More than one batch goes through :meth:`stream`, so every stream of the compiled model
        works on it (one infer request keeps one stream busy: half the CPU on a 2-stream box);
        the results are the same, bit for bit (the same compiled model and batch shape)."""
        self._check(images)
        batches = [(i, images[i : i + self.batch]) for i in range(0, images.shape[0], self.batch)]
        with self._lock:
            if len(batches) > 1 and self.nireq > 1:
                outs = [(p, e) for _, p, e in self.stream(batches)]
            else:
                outs = [self._infer_one(part) for _, part in batches]
        if not outs:
            return np.zeros((0, self.num_classes), np.float32), np.zeros((0, self.embedding_dim), np.float32)
        return np.concatenate([p for p, _ in outs]), np.concatenate([e for _, e in outs])

    def _infer_one(self, part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One batch (``len(part) <= batch``) on the engine's own infer request; the caller holds the lock."""
        self._request.infer({0: self._padded(part)})
        return _output_rows(self._request, self._probs_port, len(part)), _output_rows(self._request, self._emb_port, len(part))

    def predict(self, images: np.ndarray) -> Predictions:
        """``infer`` as a typed result: u8 [N, H, W, 3] BGR in, ``Predictions`` (probs f32 [N, C],
        embedding f32 [N, D], label names, this model's version) out."""
        probs, emb = self.infer(images)
        return self.wrap(probs, emb)

    def wrap(self, probs: np.ndarray, embedding: np.ndarray) -> Predictions:
        """Raw outputs of this model (probs f32 [N, C], embedding f32 [N, D]) as ``Predictions``."""
        return Predictions(probs, embedding, tuple(self.labels), self.version)

    def runner(
        self, callback: Callable[[Any, np.ndarray | None, np.ndarray | None, BaseException | None], None], nireq: int | None = None
    ) -> AsyncRunner:
        """An ``AsyncRunner`` over this model, for one producer thread (see ``AsyncRunner``)."""
        return AsyncRunner(self, callback, nireq)

    def stream(self, batches: Iterable[tuple[T, np.ndarray]], nireq: int | None = None) -> Iterator[tuple[T, np.ndarray, np.ndarray]]:
        """Run batches through an AsyncInferQueue owned by the calling thread; yield in order.

        Each input is ``(tag, images u8 [b <= batch, H, W, 3])``; each output
        ``(tag, probs f32 [b, C], embedding f32 [b, D])``. ``nireq``: infer requests in the
        queue (default ``self.nireq``, the runtime's optimum); more than the streams keeps
        every stream busy while the producer thread is briefly elsewhere.
        """
        queue = ov.AsyncInferQueue(self.compiled, int(nireq or self.nireq))
        done: dict[int, tuple[T, np.ndarray, np.ndarray]] = {}
        errors: list[BaseException] = []
        cv = threading.Condition()
        probs_port, emb_port = self._probs_port, self._emb_port

        def callback(request: ov.InferRequest, userdata: tuple[int, T, int, np.ndarray]) -> None:
            seq, tag, n, _keepalive = userdata
            try:
                p = _output_rows(request, probs_port, n)
                e = _output_rows(request, emb_port, n)
                with cv:
                    done[seq] = (tag, p, e)
                    cv.notify_all()
            except BaseException as exc:
                with cv:
                    errors.append(exc)
                    cv.notify_all()

        queue.set_callback(callback)
        next_out = 0
        seq = 0
        for tag, images in batches:
            self._check(images)
            arr = self._padded(images)
            queue.start_async({0: arr}, (seq, tag, images.shape[0], arr))
            seq += 1
            while True:
                with cv:
                    if errors:
                        raise errors[0]
                    item = done.pop(next_out, None)
                if item is None:
                    break
                next_out += 1
                yield item
        queue.wait_all()
        if errors:
            raise errors[0]
        while next_out < seq:
            with cv:
                item = done.pop(next_out)
            next_out += 1
            yield item


class AsyncRunner:
    """An ``AsyncInferQueue`` owned by one producer thread, for a dispatcher that keeps
    ``nireq`` batches in flight and learns about each one through a callback.

    ``callback(userdata, probs f32 [n, C] | None, embedding f32 [n, D] | None, error | None)``
    runs on a runtime thread when a batch finishes; it must be quick and must not raise.
    Only the thread that created the runner may call ``submit``, ``wait_idle`` and ``wait_all``.
    """

    def __init__(
        self,
        engine: Engine,
        callback: Callable[[Any, np.ndarray | None, np.ndarray | None, BaseException | None], None],
        nireq: int | None = None,
    ) -> None:
        self.engine = engine
        self.nireq = int(nireq or engine.nireq)
        self._queue = ov.AsyncInferQueue(engine.compiled, self.nireq)
        probs_port, emb_port = engine._probs_port, engine._emb_port

        def done(request: ov.InferRequest, userdata: tuple[Any, int, np.ndarray]) -> None:
            tag, n, _keepalive = userdata  # the input array stays alive until here (DESIGN.md)
            try:
                p = _output_rows(request, probs_port, n)
                e = _output_rows(request, emb_port, n)
            except BaseException as exc:  # handed to the callback, never raised here
                callback(tag, None, None, exc)
                return
            callback(tag, p, e, None)

        self._queue.set_callback(done)

    def wait_idle(self) -> None:
        """Block (GIL released) until at least one infer request is free."""
        self._queue.get_idle_request_id()

    def is_ready(self) -> bool:
        return bool(self._queue.is_ready())

    def submit(self, images: np.ndarray, tag: Any) -> None:
        """Start one batch u8 ``[n <= batch, H, W, 3]`` (padded here); blocks while all requests are busy."""
        self.engine._check(images)
        arr = self.engine._padded(images)
        self._queue.start_async({0: arr}, (tag, int(images.shape[0]), arr))

    def wait_all(self) -> None:
        self._queue.wait_all()
