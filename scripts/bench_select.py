"""Benchmark batch selection on a large synthetic pool: every strategy, two embedding widths, with the
approximate k-NN's error against exact search next to the times.

    .venv/bin/python scripts/bench_select.py [--pool 1000000 --labeled 10000 --dims 512,1280 --n 100 --json out.json]

For each width it writes a clustered, class-imbalanced pool of float16 embeddings to a raw file in
a work dir (in chunks, so the generator stays small), plus float32 probs ``[N, C]`` and a labeled
set, then, each in a fresh child process (so its peak RSS, ``ru_maxrss``, is its own):

- ``select(strategy, n)`` over ``FileEmbeddings`` for every strategy, nothing cached;
- the workspace cache path (``NoveltyCache``): the cold build (index, projection, one pass), a
  warm call with the same labels, and one more label (what ``/v1/queue --strategy knn`` and the
  novelty update after an annotation pay), each followed by the ``select`` that uses it;
- exactness: on ``--sample`` pool rows, the index's nearest labeled row and distance against exact
  search (recall@1, Spearman rank correlation of the k-NN novelty), the exact search's time scaled
  to the whole pool, and the exact-vs-inverted-lists crossover over labeled-set sizes (why the threshold).

The embeddings file is freshly written, so reads come from a warm page cache (not counted in RSS:
reads use pread, not mmap).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_al.acquisition import STRATEGIES, FileEmbeddings, select
from edge_al.acquisition.cache import NoveltyCache, build_counts
from edge_al.acquisition.index import EXACT_MAX_LABELED, NearestLabeled, exact_nearest
from edge_al.acquisition.novelty import l2_normalize
from export.tools.machine import cpu_line, cpu_seconds

ROOT = Path(__file__).resolve().parents[1]  # the repository (docs/benchmarks, the working directory of servers)

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


def _load(workdir: Path, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, FileEmbeddings]:
    probs = np.load(workdir / "probs.npy")
    labeled = np.load(workdir / "labeled.npy")
    labels = np.load(workdir / "labels.npy")
    return probs, labeled, labels, FileEmbeddings(workdir / "pool.f16", rows=probs.shape[0], dim=dim)


def run_one(workdir: Path, strategy: str, n: int, chunk_size: int, dim: int) -> dict[str, object]:
    """One strategy, nothing cached."""
    probs, labeled, labels, source = _load(workdir, dim)
    rss_before = _current_rss_mb()
    load = os.getloadavg()[0]
    c0, t0 = cpu_seconds(), time.perf_counter()
    sel = select(strategy, n, probs, source, labeled, labels, chunk_size=chunk_size)
    seconds = time.perf_counter() - t0
    predicted = probs[sel.indices].argmax(axis=1)
    return {
        "strategy": strategy,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds() - c0, 2),
        "load_avg_1min": [round(load, 1), round(os.getloadavg()[0], 1)],
        "rss_before_mb": round(rss_before, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "selected": int(sel.indices.size),
        "per_predicted_class": np.bincount(predicted, minlength=probs.shape[1]).tolist(),
    }


def run_cached(workdir: Path, n: int, chunk_size: int, dim: int) -> dict[str, object]:
    """The workspace path: NoveltyCache cold, warm, and after one new label, each + select('knn')."""
    probs, labeled, labels, source = _load(workdir, dim)
    cache = NoveltyCache(workdir / f"cache-{dim}.novelty", chunk_size=chunk_size)
    shutil.rmtree(cache.directory, ignore_errors=True)
    ids = np.arange(len(source), dtype=np.int64)
    lab_ids = -1 - np.arange(labeled.shape[0], dtype=np.int64)  # labeled rows are not pool rows here
    out: dict[str, object] = {"strategy": "knn (cached)"}
    exclude = np.zeros(len(source), dtype=bool)
    new_row = int(np.argmax(probs[:, -1]))  # one pool row gets labeled: rarest predicted class
    steps = (("cold", lab_ids, labeled), ("warm", lab_ids, labeled))
    steps += (("one_new_label", np.append(lab_ids, new_row), np.vstack([labeled, source.take(np.array([new_row]))])),)
    for name, l_ids, lab in steps:
        counts = dict(build_counts)
        load = os.getloadavg()[0]
        c0, t0 = cpu_seconds(), time.perf_counter()
        knn = cache.knn(ids, source, l_ids, lab)
        t_cache = time.perf_counter() - t0
        if name == "one_new_label":
            exclude[new_row] = True
        lab_labels = np.append(labels, probs.shape[1] - 1)[: lab.shape[0]]
        sel = select("knn", n, probs, source, lab, lab_labels, chunk_size=chunk_size, exclude=exclude, novelty={"knn": knn})
        total, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        # what /v1/queue runs by default: hybrid, with the cached k-NN and the cached k-means
        c1, t1 = cpu_seconds(), time.perf_counter()
        hyb = select(
            "hybrid", n, probs, source, lab, lab_labels, chunk_size=chunk_size, exclude=exclude, novelty={"knn": knn},
            clusters=lambda k: cache.clusters(ids, source, k), typicality=cache.typicality(ids),
        )  # fmt: skip
        t_hyb, cpu_hyb = time.perf_counter() - t1, cpu_seconds() - c1
        built = {k: v - counts.get(k, 0) for k, v in build_counts.items() if v - counts.get(k, 0)}
        out[name] = {
            "knn_cache_seconds": round(t_cache, 2),
            "knn_select_seconds": round(total, 2),
            "knn_select_cpu_seconds": round(cpu, 2),
            "hybrid_select_seconds": round(t_hyb, 2),
            "hybrid_select_cpu_seconds": round(cpu_hyb, 2),
            "built": built,
            "selected": [int(sel.indices.size), int(hyb.indices.size)],
            "load_avg_1min": [round(load, 1), round(os.getloadavg()[0], 1)],
        }
    out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    out["cache_mb"] = round(sum(f.stat().st_size for f in cache.directory.iterdir()) / 2**20, 1)
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def run_exactness(workdir: Path, sample: int, dim: int) -> dict[str, object]:
    """Index vs exact on ``sample`` pool rows; the exact/inverted-lists crossover over labeled-set sizes."""
    _, labeled, _, source = _load(workdir, dim)
    rows = np.sort(np.random.default_rng(1).choice(len(source), min(sample, len(source)), replace=False))
    x = l2_normalize(source.take(rows))
    lab = l2_normalize(labeled.copy())
    t0 = time.perf_counter()
    index = NearestLabeled.build(lab)
    t_build = time.perf_counter() - t0
    c0, t0 = cpu_seconds(), time.perf_counter()
    sim, row = index.search(x)
    t_ann, c_ann = time.perf_counter() - t0, cpu_seconds() - c0
    c0, t0 = cpu_seconds(), time.perf_counter()
    ex_sim, ex_row = exact_nearest(x, lab)
    t_exact, c_exact = time.perf_counter() - t0, cpu_seconds() - c0
    scale = len(source) / rows.size
    out: dict[str, object] = {
        "sample_rows": int(rows.size),
        "labeled": int(lab.shape[0]),
        "search": repr(index),
        "recall_at_1": round(float(np.mean((row == ex_row) | (np.abs(sim - ex_sim) <= 1e-6))), 4),
        "spearman_knn": round(_spearman(1 - sim, 1 - ex_sim), 4),
        "max_distance_error": round(float(np.max(ex_sim - sim)), 5),
        "index_build_seconds": round(t_build, 2),
        "index_search_seconds_whole_pool": round(t_ann * scale, 1),
        "index_search_cpu_seconds": round(c_ann, 2),
        "exact_search_seconds_whole_pool": round(t_exact * scale, 1),
        "index_search_cpu_seconds_whole_pool": round(c_ann * scale, 1),
        "exact_search_cpu_seconds_whole_pool": round(c_exact * scale, 1),
        "load_avg_1min": round(os.getloadavg()[0], 1),
    }
    crossover = []
    q = x[:10000]
    for m in sorted({1024, 2048, 4096, lab.shape[0]}):
        if m > lab.shape[0]:
            continue
        c0 = cpu_seconds()
        exact_nearest(q, lab[:m])
        ce = cpu_seconds() - c0
        ix = NearestLabeled.build(lab[:m], exact_max_labeled=0)
        c0 = cpu_seconds()
        ix.search(q)
        ch = cpu_seconds() - c0
        per_1k = 1000.0 / q.shape[0]
        crossover.append(
            {
                "labeled": m,
                "exact_cpu_ms_per_1k_queries": round(ce * per_1k * 1e3, 1),
                "ivf_cpu_ms_per_1k_queries": round(ch * per_1k * 1e3, 1),
            }
        )
    out["crossover"] = crossover
    out["nprobe"] = _probe_sweep(index, x, ex_sim, ex_row, scale)
    return out


def _probe_sweep(index: NearestLabeled, x: np.ndarray, ex_sim: np.ndarray, ex_row: np.ndarray, scale: float) -> list[dict[str, float]]:
    """Recall, rank correlation and CPU time of the inverted-list search at other probe counts (the
    shipped one is ``index.nprobe``'s default): the data for tuning speed against error."""
    if not index.approximate_:
        return []
    rows = []
    for probe in (1, 2, 3, 4):
        index.probe = probe
        c0 = cpu_seconds()
        sim, row = index.search(x)
        cpu = cpu_seconds() - c0
        rows.append({
            "nprobe": probe,
            "recall_at_1": round(float(np.mean((row == ex_row) | (np.abs(sim - ex_sim) <= 1e-6))), 4),
            "spearman_knn": round(_spearman(1 - sim, 1 - ex_sim), 4),
            "search_cpu_seconds_whole_pool": round(cpu * scale, 1),
        })  # fmt: skip
    index.probe = None
    return rows


def _child(args: argparse.Namespace) -> dict[str, object]:
    if args.child == "cached":
        return run_cached(args.workdir, args.n, args.chunk_size, args.dim)
    if args.child == "exactness":
        return run_exactness(args.workdir, args.sample, args.dim)
    return run_one(args.workdir, args.child, args.n, args.chunk_size, args.dim)


def _print(r: dict[str, object]) -> None:
    if "seconds" in r:
        print(
            f"{r['strategy']:>16}: {r['seconds']:7.2f} s   peak RSS {r['peak_rss_mb']:7.1f} MB   picked per predicted class {r['per_predicted_class']}"
        )
    else:
        print(f"{r.get('strategy', 'exactness'):>16}: " + json.dumps({k: v for k, v in r.items() if k != "strategy"}))
    sys.stdout.flush()


def bench_dim(args: argparse.Namespace, workdir: Path, dim: int) -> list[dict[str, object]]:
    common = [
        "--workdir",
        str(workdir),
        "--n",
        str(args.n),
        "--chunk-size",
        str(args.chunk_size),
        "--dim",
        str(dim),
        "--sample",
        str(args.sample),
    ]
    if not (workdir / "pool.f16").exists():
        # Children only: a child forked from a big parent would inherit its ru_maxrss.
        gen = ["--pool", str(args.pool), "--labeled", str(args.labeled), "--classes", str(args.classes), "--seed", str(args.seed)]
        subprocess.run([sys.executable, __file__, "--child", "generate", *common, *gen], check=True)
    results = []
    for job in [*args.strategies.split(","), "cached", "exactness"]:
        out = subprocess.run([sys.executable, __file__, "--child", job, *common], check=True, capture_output=True, text=True).stdout
        r = {"dim": dim, **json.loads(out.strip().splitlines()[-1])}
        _print(r)
        results.append(r)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=1_000_000)
    ap.add_argument("--labeled", type=int, default=10_000)
    ap.add_argument("--dims", default="512,1280", help="embedding widths, comma-separated")
    ap.add_argument("--dim", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--chunk-size", type=int, default=65536)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--sample", type=int, default=20000, help="pool rows the exactness figures are measured on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="reuse/keep data here (default: temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
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
        print(json.dumps(_child(args)))
        return 0

    machine = {"cpu": cpu_line(), "numpy": np.__version__, "exact_max_labeled": EXACT_MAX_LABELED}
    print(f"{machine}, pool {args.pool}, labeled {args.labeled}, n {args.n}, chunk_size {args.chunk_size}")
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="edge-al-bench-") as tmp:
        for dim in (int(d) for d in args.dims.split(",")):
            workdir = (args.workdir or Path(tmp)) / f"d{dim}"
            workdir.mkdir(parents=True, exist_ok=True)
            results += bench_dim(args, workdir, dim)
    if args.json:
        doc = {
            "machine": machine,
            "args": {k: v for k, v in vars(args).items() if k in ("pool", "labeled", "dims", "n", "classes", "sample", "seed")},
        }
        args.json.write_text(json.dumps({**doc, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
