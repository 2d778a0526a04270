"""Benchmark batch selection on a large synthetic pool.

    .venv/bin/python scripts/bench_select.py [--pool 1000000 --labeled 10000 --dim 1024 --classes 6 --n 100]

Writes a clustered, class-imbalanced pool of float16 embeddings to a raw file in a temp dir (in
chunks, so the generator stays small), plus float32 probs ``[N, C]`` and a labeled set, then
times ``select(strategy, n)`` for each strategy over ``FileEmbeddings``. Each strategy runs in a
fresh child process so its peak RSS (``ru_maxrss``) is its own; the RSS before ``select`` (probs
and labeled set loaded) is printed beside it. The embeddings file is freshly written, so reads
come from a warm page cache (page cache is not counted in RSS: reads use pread, not mmap).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edge_al.acquisition import FileEmbeddings, select  # noqa: E402

GEN_ROWS = 16384


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _class_weights(classes: int) -> np.ndarray:
    """Imbalanced like an inspection line: one dominant 'good' class, a long tail of defects."""
    w = np.array([0.7] + [0.3 * 0.6**i for i in range(classes - 1)])
    return w / w.sum()


def _embeddings(rng: np.random.Generator, centres: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rows around their class centre plus one of 8 sub-modes per class, float32 ``[n, D]``."""
    d = centres.shape[1]
    x = rng.standard_normal((labels.size, d), dtype=np.float32)
    x *= np.float32(0.6)
    x += centres[labels]
    x += 0.8 * _SUBMODES[labels, rng.integers(0, 8, labels.size)]
    np.maximum(x, 0.0, out=x)  # post-activation features are non-negative
    return x


_SUBMODES = np.empty(0, np.float32)


def _probs(rng: np.random.Generator, labels: np.ndarray, classes: int) -> np.ndarray:
    logits = rng.standard_normal((labels.size, classes), dtype=np.float32) * np.float32(1.5)
    logits[np.arange(labels.size), labels] += 2.5
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return p.astype(np.float32)


def generate(workdir: Path, pool: int, labeled: int, dim: int, classes: int, seed: int) -> None:
    global _SUBMODES
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    _SUBMODES = rng.standard_normal((classes, 8, dim), dtype=np.float32)
    weights = _class_weights(classes)
    probs = np.empty((pool, classes), np.float32)
    with open(workdir / "pool.f16", "wb") as f:
        for s in range(0, pool, GEN_ROWS):
            e = min(pool, s + GEN_ROWS)
            y = rng.choice(classes, size=e - s, p=weights)
            f.write(_embeddings(rng, centres, y).astype(np.float16).tobytes())
            probs[s:e] = _probs(rng, y, classes)
    np.save(workdir / "probs.npy", probs)
    # Labeled set: the same imbalance, but the rarest class has only 2 labels (below FRE's minimum).
    y = rng.choice(classes, size=labeled, p=weights)
    y[y == classes - 1] = 0
    y[:2] = classes - 1
    np.save(workdir / "labeled.npy", _embeddings(rng, centres, y))
    np.save(workdir / "labels.npy", y.astype(np.int64))


def run_one(workdir: Path, strategy: str, n: int, chunk_size: int, dim: int) -> dict[str, object]:
    probs = np.load(workdir / "probs.npy")
    labeled = np.load(workdir / "labeled.npy")
    labels = np.load(workdir / "labels.npy")
    source = FileEmbeddings(workdir / "pool.f16", rows=probs.shape[0], dim=dim)
    rss_before = _current_rss_mb()
    peak_before = _peak_rss_mb()
    t0 = time.perf_counter()
    sel = select(strategy, n, probs, source, labeled, labels, chunk_size=chunk_size)
    seconds = time.perf_counter() - t0
    predicted = probs[sel.indices].argmax(axis=1)
    return {
        "strategy": strategy,
        "seconds": round(seconds, 2),
        "rss_before_mb": round(rss_before, 1),
        "peak_before_mb": round(peak_before, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "selected": int(sel.indices.size),
        "per_predicted_class": np.bincount(predicted, minlength=probs.shape[1]).tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=1_000_000)
    ap.add_argument("--labeled", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--chunk-size", type=int, default=65536)
    ap.add_argument("--strategies", default="hybrid,fre,entropy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="reuse/keep data here (default: temp dir)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child == "generate":
        t0 = time.perf_counter()
        generate(args.workdir, args.pool, args.labeled, args.dim, args.classes, args.seed)
        print(
            f"generated pool {args.pool} x {args.dim} float16 "
            f"({(args.workdir / 'pool.f16').stat().st_size / 2**30:.2f} GiB), labeled {args.labeled}, "
            f"{args.classes} classes in {time.perf_counter() - t0:.1f} s; generator peak RSS {_peak_rss_mb():.0f} MB"
        )
        return 0
    if args.child:
        print(json.dumps(run_one(args.workdir, args.child, args.n, args.chunk_size, args.dim)))
        return 0

    with tempfile.TemporaryDirectory(prefix="edge-al-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        common = ["--workdir", str(workdir), "--n", str(args.n), "--chunk-size", str(args.chunk_size), "--dim", str(args.dim)]
        if not (workdir / "pool.f16").exists():
            # Children only: a child forked from a big parent would inherit its ru_maxrss.
            gen = ["--pool", str(args.pool), "--labeled", str(args.labeled), "--classes", str(args.classes), "--seed", str(args.seed)]
            subprocess.run([sys.executable, __file__, "--child", "generate", *common, *gen], check=True)
        print(f"cpus: {os.cpu_count()}, numpy {np.__version__}, chunk_size {args.chunk_size}, n {args.n}")
        for strategy in args.strategies.split(","):
            cmd = [sys.executable, __file__, "--child", strategy, *common]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(
                f"{r['strategy']:>16}: {r['seconds']:7.2f} s   peak RSS {r['peak_rss_mb']:7.1f} MB   "
                f"(RSS before select {r['rss_before_mb']:.1f} MB, peak before {r['peak_before_mb']:.1f} MB)   "
                f"picked per predicted class {r['per_predicted_class']}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
