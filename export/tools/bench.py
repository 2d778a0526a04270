"""Speed benchmark: edge-al's pool scoring against the runtime's ceiling and the usual alternatives.

One run, one model, one batch size (issue 4, "Speed benchmark"):

==================  ==========================================================================
path                what is timed
==================  ==========================================================================
benchmark_app       ``benchmark_app -m model.xml -d CPU -hint throughput -b B -shape [B,H,W,3]``:
                    the runtime's ceiling on the INT8 IR (random u8 input, no decode, no I/O)
edge-al first pass  ``score_pool`` on a pool of JPEGs with a cold image cache (decode, resize,
                    cache, infer, persist); the JPEG files themselves are in the page cache
edge-al cached      ``score_pool`` again after the version's predictions are dropped: images come
                    from the resized u8 cache (what rescoring after a retrain costs)
FP32 IR @ f32       ``benchmark_app`` on ``reference.xml`` with ``-infer_precision f32``
FP32 IR @ default   ``benchmark_app`` on ``reference.xml`` at the CPU plugin's default precision
                    (bf16 on CPUs with bf16 support)
PyTorch eager       the checkpoint's model, ``torch.no_grad()``, float NCHW batches of the same
                    size, ``torch.set_num_threads(os.cpu_count())`` (what a notebook does) and
                    with one thread: the faster is reported (both are kept in the details)
ONNX Runtime        the same model exported to ONNX, ``CPUExecutionProvider``, float NCHW
                    batches, default threads and one thread: the faster is reported
==================  ==========================================================================

PyTorch and ONNX Runtime are fed ready-made float tensors (no decode, no normalisation), so
their figures are ceilings too; edge-al's figures include JPEG decode and SQLite writes.
The rows that need torch or onnxruntime are imported lazily and skipped with a reason when
the package is missing; ``edge_al`` itself never imports torch at import time.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_al.config import DEFAULT_ARCH, Settings
from edge_al.errors import EdgeALError, InvalidInput, MissingDependency
from edge_al.registry import ModelVersion, Registry
from edge_al.storage import images_storage
from edge_al.store import Store, open_store

__all__ = [
    "BenchRow",
    "BenchWorkspace",
    "benchmark_app",
    "build_workspace",
    "generate_jpegs",
    "machine_info",
    "render_markdown",
    "run_bench",
    "score_passes",
    "write_report",
]

DEFAULT_IMAGE_SIZE = 128
_THROUGHPUT_RE = re.compile(r"Throughput:\s*([0-9.]+)\s*FPS")
_PRECISION_RE = re.compile(r"INFERENCE_PRECISION_HINT:\s*(.+)")
_PRECISION_NAMES = {"bfloat16": "bf16", "float32": "f32", "float16": "f16", "f32": "f32", "bf16": "bf16", "f16": "f16"}


def _short_precision(text: str) -> str:
    """``<Type: 'bfloat16'>`` (benchmark_app's dump) or ``bf16`` -> ``bf16``."""
    m = re.search(r"'([^']+)'", text)
    name = (m.group(1) if m else text).strip()
    return _PRECISION_NAMES.get(name, name)


# -- the machine -------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """CPU model (from /proc/cpuinfo), core count, OpenVINO and Python versions."""
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    have = set(line.split(":", 1)[1].split())
                    flags = sorted(have & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"})
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "cpu_flags": flags,
        "openvino": _version("openvino"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- benchmark_app -----------------------------------------------------------------------------
def _benchmark_app_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("benchmark_app")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("benchmark_app")
    if found:
        return [found]
    raise MissingDependency("benchmark_app was not found beside the Python interpreter or on PATH: it ships with `pip install openvino`.")


def benchmark_app(
    xml: str | Path,
    *,
    batch: int,
    height: int,
    width: int,
    seconds: float = 10,
    infer_precision: str | None = None,
    device: str = "CPU",
    hint: str = "throughput",
) -> dict[str, Any]:
    """Run ``benchmark_app`` on an IR with a static u8 ``[batch, height, width, 3]`` input.

    Returns ``{"images_per_s", "precision", "command", "seconds"}``; ``precision`` is the
    INFERENCE_PRECISION_HINT the compiled model reports (read from benchmark_app's dump of
    the compiled model's properties).
    """
    cmd = [
        *_benchmark_app_cmd(),
        "-m", str(xml), "-d", device, "-hint", hint, "-b", str(batch),
        "-shape", f"[{batch},{height},{width},3]", "-t", str(max(1, round(seconds))),
    ]  # fmt: skip
    if infer_precision:
        cmd += ["-infer_precision", infer_precision]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    text = out.stdout + out.stderr
    m = _THROUGHPUT_RE.search(text)
    if out.returncode != 0 or m is None:
        tail = "\n".join(text.strip().splitlines()[-15:])
        raise EdgeALError(f"benchmark_app failed (exit {out.returncode}) for {xml}:\n{tail}")
    precisions = _PRECISION_RE.findall(text)
    return {
        "images_per_s": float(m.group(1)),
        "precision": _short_precision(precisions[-1]) if precisions else "?",
        "command": "benchmark_app " + " ".join(cmd[1:]),
        "seconds": round(time.perf_counter() - t0, 1),
    }


# -- a generated pool --------------------------------------------------------------------------
def _texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """u8 [H, W, 3] smooth noise: compresses and decodes like a photo, not like a flat card."""
    small = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _jpeg(i: int, width: int, height: int, textures: Sequence[np.ndarray], quality: int) -> bytes:
    """The ``i``-th generated image: a shifted texture, a shape, and its index written on it."""
    rng = np.random.default_rng(1_000_003 + i)
    base = textures[i % len(textures)]
    img = np.roll(base, (int(rng.integers(0, height)), int(rng.integers(0, width))), axis=(0, 1))
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
    radius = int(rng.integers(max(3, min(width, height) // 16), max(4, min(width, height) // 3)))
    if i % 2:
        cv2.circle(img, centre, radius, colour, -1)
    else:
        cv2.rectangle(img, (centre[0] - radius, centre[1] - radius), (centre[0] + radius, centre[1] + radius), colour, -1)
    cv2.putText(img, str(i), (4, height - 6), cv2.FONT_HERSHEY_SIMPLEX, max(0.3, height / 400), (255, 255, 255), 1)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - cv2 always encodes a u8 image
        raise EdgeALError(f"cv2 could not encode generated image {i}")
    return bytes(buf.tobytes())


def generate_jpegs(
    folder: str | Path, n: int, *, size: tuple[int, int] = (640, 480), quality: int = 90, workers: int | None = None, prefix: str = "img"
) -> list[Path]:
    """``n`` distinct generated JPEGs of ``size`` = (width, height) in ``folder`` (reused when present).

    Images already there under the same name are kept, so a second run only pays for what is
    missing. Every image differs (its index is drawn on it), so ingest's content-hash dedupe
    keeps them all.
    """
    if n < 1:
        raise InvalidInput(f"The 'n' parameter must be an int >= 1. Got {n!r} instead.")
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    width, height = int(size[0]), int(size[1])
    paths = [root / f"{prefix}_{i:07d}.jpg" for i in range(n)]
    todo = [i for i, p in enumerate(paths) if not p.exists()]
    if not todo:
        return paths
    rng = np.random.default_rng(12345)
    textures = [_texture(rng, width, height) for _ in range(8)]

    def one(i: int) -> None:
        data = _jpeg(i, width, height, textures, quality)
        tmp = paths[i].with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, paths[i])

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as ex:
        list(ex.map(one, todo, chunksize=64))
    return paths


# -- a workspace with a real exported model ----------------------------------------------------
@dataclass
class BenchWorkspace:
    """A workspace (store + cache + registry) with an exported, active model version."""

    settings: Settings
    version: ModelVersion
    checkpoint: Path
    images: int
    build_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        s = int(self.version.meta.get("image_size") or DEFAULT_IMAGE_SIZE)
        return (s, s)


def _say(log: Callable[[str], None] | None, text: str) -> None:
    if log is not None:
        log(text)


def build_workspace(
    home: str | Path,
    pool: Sequence[str | Path],
    *,
    arch: str = DEFAULT_ARCH,
    image_size: int = DEFAULT_IMAGE_SIZE,
    labeled: int = 128,
    epochs: int = 8,
    log: Callable[[str], None] | None = None,
) -> BenchWorkspace:
    """Ingest ``pool`` into ``home``, label ``labeled`` samples, train and export a model (INT8).

    Reuses a workspace that already holds an active model of the same architecture and input
    size and at least as many samples. The labels are the generator's shape class (circle on
    odd indices, square on even ones), trained long enough (8 epochs) that the model is
    confident across the pool: a split with a boundary through the pool (brightness above or
    below the median, tried first) leaves near-tie predictions that flip under INT8 and bf16
    alike (top-1 agreement 0.975 for resnet18), and the export rightly falls back to FP32.
    Needs ``edge-al[train]``.
    """
    from edge_al.pool import ingest
    from export import workflow as wf

    t0 = time.perf_counter()
    settings = Settings(home=Path(home).resolve())
    settings.home.mkdir(parents=True, exist_ok=True)
    store = open_store(settings)
    registry = Registry(settings.registry_dir)
    try:
        mv = registry.active()
        ckpts = sorted(settings.checkpoints_dir.glob("*.pt"))
        if (
            mv is not None
            and mv.meta.get("arch") == arch
            and int(mv.meta.get("image_size") or 0) == image_size
            and store.count_samples() >= len(pool)
            and ckpts
        ):
            _say(log, f"reusing workspace {settings.home} (model {mv.version}, {store.count_samples()} samples)")
            return BenchWorkspace(settings, mv, ckpts[-1], store.count_samples(), time.perf_counter() - t0)
        _say(log, f"ingesting {len(pool)} images into {settings.home}")
        ingest(store, settings, [str(p) for p in pool], workers=os.cpu_count() or 2)
        ids = store.sample_ids()
        rng = np.random.default_rng(0)
        chosen = rng.choice(ids, size=min(labeled, len(ids)), replace=False)
        for sample in store.samples(chosen.tolist()):
            # the generator draws a circle on odd and a square on even indices (and the texture's
            # parity follows the index): a class every image shows unambiguously, so the model is
            # confident across the pool and the INT8 agreement gate measures quantization, not ties
            name = "circle" if int(Path(sample.path).stem.rsplit("_", 1)[-1]) % 2 else "square"
            store.add_label(name)
            store.add_annotation(sample.id, "correct", name, "bench")
        _say(log, f"training {arch} at {image_size}x{image_size} for {epochs} epoch(s) on {len(chosen)} labeled images")
        # weights=None: the architecture's default (ImageNet + a head on frozen features for efficientnet_lite0,
        # from scratch otherwise); speed does not depend on it, and a head trains in seconds
        ckpt = wf.train_from_store(settings, store, arch=arch, weights=None, image_size=image_size, epochs=epochs, progress=False)
        _say(log, "exporting: ONNX -> IR -> NNCF INT8 (with gates)")
        mv, _ = wf.export_from_store(settings, store, ckpt, registry=registry, progress=False)
        registry.promote(mv.version)
        notes = []
        if mv.meta.get("precision") != "int8":
            notes.append(f"the export fell back to {mv.meta.get('precision')} (INT8 gates failed): model.xml is not INT8")
        return BenchWorkspace(settings, mv, Path(ckpt), store.count_samples(), time.perf_counter() - t0, notes)
    finally:
        store.close()


# -- edge-al's own scoring path ----------------------------------------------------------------
def _reset_version(settings: Settings, store: Store, version: str, *, drop_cache: bool) -> None:
    """Forget a version's predictions and embeddings (and, with ``drop_cache``, the image cache)."""
    store.delete_predictions(version)
    (settings.embeddings_dir / f"{version}.f16").unlink(missing_ok=True)
    if drop_cache:
        shutil.rmtree(settings.cache_dir, ignore_errors=True)


def score_passes(
    settings: Settings,
    *,
    batch: int = 8,
    device: str = "CPU",
    passes: Sequence[str] = ("first", "cached"),
    engine: Any = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Score the whole pool with the active model through ``score_pool`` (what ``edge-al score`` runs).

    ``first``: the image cache is deleted first (every JPEG is decoded; the files themselves
    are likely in the page cache). ``cached``: only the version's predictions and embeddings
    are dropped, so the resized images come from the cache. The engine is compiled once
    before the passes (``compile_s``; or pass one in), as benchmark_app compiles before it
    measures; each pass is timed end to end around ``score_pool``: store queries, decode,
    cache, inference, SQLite writes and the novelty update. ``cli_images_per_s`` is the
    figure ``edge-al score`` prints for the same work (it stops before the novelty update).
    """
    from edge_al.engine import Engine
    from edge_al.scoring import score_pool

    store = open_store(settings)
    registry = Registry(settings.registry_dir)
    out: dict[str, dict[str, Any]] = {}
    try:
        mv = registry.active()
        if mv is None:
            raise InvalidInput(f"The workspace {settings.home} has no active model: build one first.")
        compile_s = 0.0
        if engine is None:
            t0 = time.perf_counter()
            engine = Engine(mv.xml, device=device, batch=batch)
            compile_s = time.perf_counter() - t0
        for name in passes:
            if name not in ("first", "cached"):
                raise InvalidInput(f"A pass must be 'first' or 'cached'. Got {name!r} instead.")
            _reset_version(settings, store, mv.version, drop_cache=name == "first")
            t0 = time.perf_counter()
            rep = score_pool(settings, store, registry, device=device, batch=batch, engine=engine)
            wall = time.perf_counter() - t0
            if rep.scored == 0:
                raise EdgeALError(f"The {name} pass scored nothing: is the pool empty?")
            out[name] = {
                "scored": rep.scored,
                "failed": len(rep.failed),
                "seconds": round(wall, 3),
                "images_per_s": rep.scored / wall,
                "cli_images_per_s": round(rep.images_per_s, 1),
                "compile_s": round(compile_s, 3),
                "engine": rep.engine,
            }
            _say(log, f"edge-al score, {name} pass: {rep.scored} images in {wall:.2f} s = {rep.scored / wall:.0f} img/s")
    finally:
        store.close()
    return out


def decode_only(paths: Sequence[str | Path], size: tuple[int, int], *, workers: int | None = None, limit: int = 2000) -> dict[str, Any]:
    """JPEG decode + resize alone (no inference, no I/O but reads), on ``workers`` threads: the bound
    on a first pass on this CPU."""
    from edge_al.images import decode_resized, probe

    items = [Path(p) for p in paths[:limit]]
    datas = [p.read_bytes() for p in items]
    dims = [(i.width, i.height) for i in (probe(d, max_pixels=1 << 30, max_bytes=1 << 30, verify=False) for d in datas[:1])]
    w, h = dims[0]
    n = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=n) as ex:
        list(ex.map(lambda d: decode_resized(d, size, w, h), datas, chunksize=32))
    wall = time.perf_counter() - t0
    return {"images_per_s": len(datas) / wall, "images": len(datas), "threads": n, "source_size": [w, h]}


# -- PyTorch eager and ONNX Runtime ------------------------------------------------------------
def _timed_loop(step: Callable[[], object], batch: int, seconds: float, warmup: int = 3) -> dict[str, Any]:
    for _ in range(warmup):
        step()
    n = 0
    t0 = time.perf_counter()
    while True:
        step()
        n += 1
        wall = time.perf_counter() - t0
        if wall >= seconds and n >= 3:
            break
    return {"images_per_s": n * batch / wall, "iterations": n, "seconds": round(wall, 2)}


def _thread_counts() -> list[int]:
    cores = os.cpu_count() or 1
    return [cores] if cores == 1 else [cores, 1]


def torch_eager(checkpoint: str | Path, *, batch: int, seconds: float = 10) -> dict[str, Any]:
    """The checkpoint's model in PyTorch eager mode on the CPU: ``torch.no_grad()``, float
    ``[batch, 3, S, S]`` input, ``torch.set_num_threads(os.cpu_count())`` as a notebook does,
    and again with one thread; the faster of the two is the figure (on a busy machine
    OpenMP's barriers with one thread per core can be 10x slower than one thread)."""
    try:
        import torch

        from export.train import load_checkpoint, model_from_checkpoint
    except ImportError as exc:
        raise MissingDependency(f"The PyTorch row needs torch ({exc}): install edge-al[train].") from None
    ck = load_checkpoint(checkpoint)
    size = int(ck["image_size"])
    model = model_from_checkpoint(ck).eval()
    before = torch.get_num_threads()
    by_threads: dict[int, dict[str, Any]] = {}
    try:
        x = torch.randn(batch, 3, size, size)
        for threads in _thread_counts():
            torch.set_num_threads(threads)
            with torch.no_grad():
                by_threads[threads] = _timed_loop(lambda: model(x), batch, seconds / len(_thread_counts()))
    finally:
        torch.set_num_threads(before)
    return {**_fastest(by_threads), "torch": str(torch.__version__), "precision": "f32"}


def _fastest(by_threads: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The fastest thread count's figures, with every count's images/s beside them."""
    best = max(by_threads, key=lambda t: by_threads[t]["images_per_s"])
    return {**by_threads[best], "threads": best, "by_threads": {str(t): round(r["images_per_s"], 1) for t, r in by_threads.items()}}


def onnx_model(checkpoint: str | Path, path: str | Path) -> Path:
    """``path``: the checkpoint's model as ONNX (float NCHW in), exported once and reused."""
    target = Path(path)
    if target.exists():
        return target
    try:
        from export.convert import export_onnx
        from export.train import load_checkpoint, model_from_checkpoint
    except ImportError as exc:
        raise MissingDependency(f"Exporting ONNX needs torch and onnx ({exc}): install edge-al[train].") from None
    ck = load_checkpoint(checkpoint)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    export_onnx(model_from_checkpoint(ck), int(ck["image_size"]), tmp)
    os.replace(tmp, target)
    return target


def onnxruntime_cpu(onnx_path: str | Path, *, batch: int, size: int, seconds: float = 10) -> dict[str, Any]:
    """ONNX Runtime, ``CPUExecutionProvider``, all graph optimisations, float ``[batch, 3, S, S]``
    input; with the default intra-op threads (one per core) and with one thread, the faster
    of the two is the figure."""
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise MissingDependency(f"The ONNX Runtime row needs onnxruntime ({exc}): pip install onnxruntime.") from None
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    by_threads: dict[int, dict[str, Any]] = {}
    for threads in _thread_counts():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        by_threads[threads] = _timed_loop(lambda: sess.run(None, {name: x}), batch, seconds / len(_thread_counts()))  # noqa: B023
    return {**_fastest(by_threads), "onnxruntime": str(ort.__version__), "precision": "f32"}


# -- the whole benchmark -----------------------------------------------------------------------
@dataclass
class BenchRow:
    """One line of the table: a path, its images/s and ratio to the ceiling, or why it was skipped."""

    key: str
    path: str
    images_per_s: float | None = None
    ratio: float | None = None
    precision: str = ""
    note: str = ""
    skipped: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "path": self.path,
            "images_per_s": None if self.images_per_s is None else round(self.images_per_s, 1),
            "ratio_to_ceiling": None if self.ratio is None else round(self.ratio, 3),
            "precision": self.precision,
            "note": self.note,
            "skipped": self.skipped,
            "details": self.details,
        }


ROW_KEYS = ("ceiling", "first_pass", "cached", "decode_only", "fp32_f32", "fp32_default", "torch_eager", "onnxruntime")

TARGETS: dict[str, tuple[str, str, float]] = {
    # name: (numerator row, denominator row, minimum)
    "cached_vs_ceiling": ("cached", "ceiling", 0.8),
    "first_pass_vs_ceiling": ("first_pass", "ceiling", 0.4),
    "cached_vs_torch_eager": ("cached", "torch_eager", 5.0),
    "cached_vs_onnxruntime": ("cached", "onnxruntime", 1.5),
    "int8_vs_fp32_f32": ("ceiling", "fp32_f32", 1.8),
}


def _measure(rows: dict[str, BenchRow], key: str, path: str, fn: Callable[[], dict[str, Any]], log: Callable[[str], None] | None) -> None:
    try:
        res = fn()
    except (EdgeALError, ImportError, OSError, RuntimeError) as exc:
        rows[key] = BenchRow(key, path, skipped=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
        _say(log, f"{path}: skipped ({rows[key].skipped})")
        return
    ips = float(res.pop("images_per_s"))
    rows[key] = BenchRow(key, path, ips, precision=str(res.pop("precision", "")), details=res)
    _say(log, f"{path}: {ips:.0f} img/s")


def _bench_subject(
    work: Path, home: str | Path | None, images: int, source_size: tuple[int, int], arch: str, image_size: int,
    log: Callable[[str], None] | None,
) -> tuple[Settings, ModelVersion, list[str], list[Path]]:  # fmt: skip
    """The workspace, model version, notes and JPEGs to measure: a generated pool and a freshly built
    model under ``work``, or the active model of an existing workspace ``home`` (its first 200 images)."""
    if home is None:
        _say(log, f"generating {images} JPEGs of {source_size[0]}x{source_size[1]} under {work}")
        pool = generate_jpegs(work / f"pool-{source_size[0]}x{source_size[1]}", images, size=source_size)
        ws = build_workspace(work / f"ws-{arch}-{image_size}-{images}", pool, arch=arch, image_size=image_size, log=log)
        return ws.settings, ws.version, list(ws.notes), pool
    settings = Settings(home=Path(home).resolve())
    active = Registry(settings.registry_dir).active()
    if active is None:
        raise InvalidInput(f"The workspace {settings.home} has no active model.")
    st = open_store(settings)
    try:
        where = images_storage(settings).location  # stored refs -> files this box can open
        return settings, active, [], [Path(where(s.path)) for s in st.samples(st.sample_ids()[:200].tolist())]
    finally:
        st.close()


def _scoring_rows(
    rows: dict[str, BenchRow], settings: Settings, mv: ModelVersion, bench_kw: dict[str, Any], cached_repeats: int,
    log: Callable[[str], None] | None,
) -> None:  # fmt: skip
    """The ceiling (benchmark_app before and after, the higher counts) and edge-al's first and cached passes."""
    batch, device = int(bench_kw["batch"]), str(bench_kw["device"])
    _say(log, "benchmark_app on model.xml (the ceiling)")
    ceilings = [benchmark_app(mv.xml, **bench_kw)]
    passes: dict[str, dict[str, Any]] = {}
    try:
        passes = score_passes(settings, batch=batch, device=device, log=log)
        # a cached pass over a small pool lasts ~a second: take the median of three
        more = [
            score_passes(settings, batch=batch, device=device, passes=("cached",), log=log)["cached"] for _ in range(cached_repeats - 1)
        ]
        runs = sorted([passes["cached"], *more], key=lambda r: float(r["images_per_s"]))
        passes["cached"] = {**runs[len(runs) // 2], "runs": [round(float(r["images_per_s"]), 1) for r in runs]}
    except EdgeALError as exc:
        for key in ("first_pass", "cached"):
            rows[key] = BenchRow(key, "", skipped=str(exc))
    ceilings.append(benchmark_app(mv.xml, **bench_kw))
    best = max(ceilings, key=lambda r: float(r["images_per_s"]))
    rows["ceiling"] = BenchRow(
        "ceiling", f"benchmark_app, model.xml ({mv.meta.get('precision', '?').upper()})", float(best["images_per_s"]),
        precision=f"{mv.meta.get('precision', '?')} (hint {best['precision']})",
        note="the higher of two runs (before and after edge-al's passes)",
        details={"runs": [round(float(c["images_per_s"]), 1) for c in ceilings], "command": best["command"]},
    )  # fmt: skip
    for key, label in (("first_pass", "edge-al score, first pass (cold image cache)"), ("cached", "edge-al score, cached rescoring")):
        p = passes.get("first" if key == "first_pass" else "cached")
        if p is not None:
            rows[key] = BenchRow(
                key, label, float(p["images_per_s"]),
                precision=f"{mv.meta.get('precision', '?')} (hint {p['engine'].get('inference_precision', '?')})",
                note=f"{p['scored']} images; score_pool wall time, engine compiled beforehand ({p['compile_s']:.2f} s)"
                + (f"; median of {len(p['runs'])} passes {p['runs']}" if p.get("runs") else ""),
                details=p,
            )  # fmt: skip
        elif key not in rows:
            rows[key] = BenchRow(key, label, skipped="the scoring pass did not run")
        rows[key].path = rows[key].path or label


def _baseline_rows(
    rows: dict[str, BenchRow], mv: ModelVersion, jpegs: list[Path], work: Path, arch: str, size: int, bench_kw: dict[str, Any],
    log: Callable[[str], None] | None,
) -> None:  # fmt: skip
    """Decode only, the FP32 IR at f32 and at the default precision, PyTorch eager and ONNX Runtime."""
    batch, seconds = int(bench_kw["batch"]), float(bench_kw["seconds"])
    _measure(rows, "decode_only", f"JPEG decode + resize only, {os.cpu_count() or 1} threads (no inference)",
             lambda: {**decode_only(jpegs, (size, size)), "precision": "-"}, log)  # fmt: skip
    rows["decode_only"].note = "the bound on a first pass: decoding shares the cores with inference"
    _measure(rows, "fp32_f32", "benchmark_app, reference.xml (FP32 IR) at f32",
             lambda: benchmark_app(mv.reference_xml, infer_precision="f32", **bench_kw), log)  # fmt: skip
    _measure(rows, "fp32_default", "benchmark_app, reference.xml (FP32 IR) at the default precision",
             lambda: benchmark_app(mv.reference_xml, **bench_kw), log)  # fmt: skip
    checkpoint = mv.path / "checkpoint.pt"
    torch_label, ort_label = "PyTorch eager (CPU, no_grad, float NCHW)", "ONNX Runtime (CPUExecutionProvider, float NCHW)"
    if not checkpoint.exists():
        reason = f"{mv.version} has no checkpoint.pt (not built by `edge-al export`): no torch model to run"
        rows["torch_eager"] = BenchRow("torch_eager", torch_label, skipped=reason)
        rows["onnxruntime"] = BenchRow("onnxruntime", ort_label, skipped=reason)
        return
    _measure(rows, "torch_eager", torch_label, lambda: torch_eager(checkpoint, batch=batch, seconds=seconds), log)
    onnx_path = work / "onnx" / f"{mv.version}-{arch}-{size}.onnx"
    _measure(rows, "onnxruntime", ort_label,
             lambda: onnxruntime_cpu(onnx_model(checkpoint, onnx_path), batch=batch, size=size, seconds=seconds), log)  # fmt: skip
    for key in ("torch_eager", "onnxruntime"):
        if rows[key].skipped is None:
            rows[key].note = f"images/s by thread count {rows[key].details.get('by_threads')}: the faster is reported"


def _targets(rows: dict[str, BenchRow]) -> dict[str, dict[str, Any]]:
    """Each row's ratio to the ceiling (set on the rows), and each target ratio with its verdict."""
    ceiling = rows["ceiling"].images_per_s or float("nan")
    for row in rows.values():
        if row.images_per_s is not None:
            row.ratio = row.images_per_s / ceiling
    targets = {}
    for name, (num, den, minimum) in TARGETS.items():
        top, bottom = rows[num].images_per_s, rows[den].images_per_s
        ratio = None if top is None or bottom is None else top / bottom
        targets[name] = {
            "value": None if ratio is None else round(ratio, 3),
            "target": minimum,
            "met": None if ratio is None else ratio >= minimum,
        }
    return targets


def run_bench(
    *,
    work: str | Path,
    images: int = 2000,
    batch: int = 8,
    arch: str = DEFAULT_ARCH,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seconds: float = 10,
    source_size: tuple[int, int] = (640, 480),
    home: str | Path | None = None,
    device: str = "CPU",
    cached_repeats: int = 3,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every row of the speed benchmark, in one run on one model and batch size.

    ``work`` keeps the generated JPEGs and the workspace between runs. The cached pass is
    the median of ``cached_repeats`` passes (each is short). ``home``: use that
    workspace's active model and pool instead of building one (its pool is scored as it is).
    Returns the JSON document that :func:`write_report` writes.
    """
    for name, value, lo in (("images", images, 1), ("batch", batch, 1), ("image_size", image_size, 8)):
        if not isinstance(value, int) or value < lo:
            raise InvalidInput(f"The '{name}' parameter must be an int >= {lo}. Got {value!r} instead.")
    if not seconds > 0:
        raise InvalidInput(f"The 'seconds' parameter must be > 0. Got {seconds!r} instead.")
    started = time.time()
    work = Path(work).resolve()
    settings, mv, notes, pool = _bench_subject(work, home, images, source_size, arch, image_size, log)
    size = int(mv.meta.get("image_size") or image_size)
    rows: dict[str, BenchRow] = {}
    bench_kw: dict[str, Any] = {"batch": batch, "height": size, "width": size, "seconds": seconds, "device": device}
    _scoring_rows(rows, settings, mv, bench_kw, cached_repeats, log)
    _baseline_rows(rows, mv, pool, work, arch, size, bench_kw, log)
    targets = _targets(rows)
    return {
        "machine": machine_info(),
        "model": {"version": mv.version, "arch": mv.meta.get("arch", arch), "precision": mv.meta.get("precision"),
                  "image_size": size, "batch": batch, "device": device, "workspace": str(settings.home)},
        "pool": {"images": len(pool) if home is None else None, "source_size": list(source_size) if home is None else None},
        "seconds_per_measurement": seconds,
        "rows": [rows[k].as_dict() for k in ROW_KEYS],
        "targets": targets,
        "notes": [
            *notes,
            "The JPEG files were in the page cache for the first pass (they were just generated and ingested); the image cache was not.",
            "PyTorch and ONNX Runtime get ready float tensors (no decode, no normalisation); edge-al's figures include decode, cache and SQLite.",
            "The machine is shared: ratios are measured in the same run, and the ceiling is the higher of two benchmark_app runs.",
        ],
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "total_seconds": round(time.time() - started, 1),
    }  # fmt: skip


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:,.{digits}f}"


def render_table(doc: dict[str, Any]) -> str:
    """The table as plain text for the terminal."""
    m = doc["machine"]
    lines = [
        f"CPU: {m['cpu']}, {m['cores']} cores ({' '.join(m['cpu_flags'])}); OpenVINO {m['openvino']}",
        f"model: {doc['model']['arch']} {doc['model']['version']} ({doc['model']['precision']}), "
        f"{doc['model']['image_size']}x{doc['model']['image_size']}, batch {doc['model']['batch']}, device {doc['model']['device']}",
        "",
        f"{'path':<66} {'images/s':>10} {'ratio':>7}  precision",
    ]
    for r in doc["rows"]:
        if r["skipped"]:
            lines.append(f"{r['path']:<66} {'skipped':>10} {'':>7}  {r['skipped']}")
        else:
            lines.append(f"{r['path']:<66} {_fmt(r['images_per_s']):>10} {_fmt(r['ratio_to_ceiling'], 2):>7}  {r['precision']}")
    lines.append("")
    for name, t in doc["targets"].items():
        met = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
        lines.append(f"target {name}: {_fmt(t['value'], 2)} (>= {t['target']}) {met}")
    return "\n".join(lines)


def render_markdown(doc: dict[str, Any], command: str = "") -> str:
    """The table, the targets and the notes as markdown."""
    m, mod = doc["machine"], doc["model"]
    out = [
        "# edge-al speed benchmark",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores (flags: {', '.join(m['cpu_flags']) or '-'})",
        f"- OpenVINO {m['openvino']}, Python {m['python']}, {m['platform']}",
        f"- model: {mod['arch']} {mod['version']} ({mod['precision']}), input {mod['image_size']}x{mod['image_size']}, "
        f"batch {mod['batch']}, device {mod['device']}",
        f"- measured {doc['started_at']}, {doc['seconds_per_measurement']} s per measurement, {doc['total_seconds']} s in all",
    ]
    if command:
        out.append(f"- command: `{command}`")
    out += ["", "| path | images/s | ratio to ceiling | precision | note |", "|---|---:|---:|---|---|"]
    for r in doc["rows"]:
        if r["skipped"]:
            out.append(f"| {r['path']} | skipped | - | - | {r['skipped']} |")
        else:
            out.append(f"| {r['path']} | {_fmt(r['images_per_s'])} | {_fmt(r['ratio_to_ceiling'], 2)} | {r['precision']} | {r['note']} |")
    out += ["", "| target | value | minimum | met |", "|---|---:|---:|---|"]
    for name, t in doc["targets"].items():
        out.append(f"| {name} | {_fmt(t['value'], 2)} | {t['target']} | {'-' if t['met'] is None else ('yes' if t['met'] else 'no')} |")
    out += ["", "Notes:", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(out) + "\n"


def write_report(doc: dict[str, Any], out: str | Path, *, name: str = "bench", command: str = "") -> tuple[Path, Path]:
    """Write ``<out>/<name>.json`` and ``<out>/<name>.md``; returns both paths."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    jpath, mpath = folder / f"{name}.json", folder / f"{name}.md"
    jpath.write_text(json.dumps({**doc, "command": command}, indent=2, default=str) + "\n", encoding="utf-8")
    mpath.write_text(render_markdown(doc, command), encoding="utf-8")
    return jpath, mpath
