"""Benchmark the whole ``GET /v1/queue`` request on a 1M-sample workspace: cold, warm, and right
after one new annotation (the "<= 2 s after a new label" target of issue 14).

    .venv/bin/python scripts/bench_queue.py --data BENCH_WORK/d1280 --dim 1280 --work QUEUE_WORK [--n 10]

``--data`` is a data set written by ``scripts/bench_select.py`` (``pool.f16`` float16 ``[N, D]``,
``probs.npy`` float32 ``[N, C]``). The workspace under ``--work`` is built once and reused:

- a SQLite store with one sample per pool row (ids 1..N; fake refs and hashes: the queue reads no
  image) and one prediction row per sample for model version ``v0001``, inserted in big
  transactions straight through the store's connection;
- ``embeddings/v0001.f16``: a symbolic link to the data set's ``pool.f16`` (row = sample id, so
  sample ``i`` has pool row ``i``; the last sample's row lies past the file's end and reads as zeros);
- a registry entry ``v0001`` (``meta.json`` with the labels and ``embedding_dim``), active;
- ``--labeled`` decided samples (labels = the predicted class), the rarest class included.

Then the real Flask app runs in this process (test client, no auth, no model started, no job
manager) and each step is timed: wall and CPU seconds of the process, the 1-minute load average
before and after. ``--fresh-cache`` removes the version's novelty cache and predictions file first (a cold first call).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_al.api import create_app
from edge_al.config import Settings, load_settings
from edge_al.store import Store, open_store
from export.tools.machine import cpu_line, cpu_seconds

VERSION = "v0001"
_BATCH = 100_000


def _labels(classes: int) -> list[str]:
    return ["good", *(f"defect_{i}" for i in range(1, classes))]


def _insert_pool(store: Store, probs: np.ndarray) -> None:
    """Samples 1..N and their predictions by ``VERSION`` (the scores columns as scoring writes them)."""
    now = time.time()
    with store.tx() as c:
        for s in range(0, len(probs), _BATCH):
            e = min(len(probs), s + _BATCH)
            c.executemany(
                "INSERT INTO samples(id, sha256, path, width, height, source, created_at) VALUES (?, ?, ?, 64, 64, 'bench', ?)",
                [(i + 1, f"{i + 1:064x}", f"pool/{i + 1:07d}.png", now) for i in range(s, e)],
            )
            p = probs[s:e]
            top2 = -np.sort(-p, axis=1)[:, :2]
            ent = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1)
            c.executemany(
                "INSERT INTO predictions(sample_id, model_version, label_index, confidence, probs, least_confidence, margin,"
                " entropy) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (s + k + 1, VERSION, int(np.argmax(p[k])), float(top2[k, 0]), p[k].tobytes(), float(1 - top2[k, 0]),
                     float(top2[k, 0] - top2[k, 1]), float(ent[k]))
                    for k in range(e - s)
                ],
            )  # fmt: skip


def _annotate(store: Store, probs: np.ndarray, labeled: int, labels: list[str], seed: int) -> None:
    """``labeled`` decisions: random samples labeled with their predicted class, plus a few of the rarest."""
    rng = np.random.default_rng(seed)
    pred = probs.argmax(axis=1)
    rare = np.flatnonzero(pred == len(labels) - 1)[:20]
    rows = np.unique(np.concatenate([rng.choice(len(probs), labeled - len(rare), replace=False), rare]))
    now = time.time()
    with store.tx() as c:
        for name in labels:
            c.execute("INSERT INTO labels(name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING", (name, now))
        c.executemany(
            "INSERT INTO annotations(sample_id, label, action, annotator, model_version, created_at) VALUES (?, ?, 'correct', 'bench', ?, ?)",
            [(int(r) + 1, labels[int(pred[r])], VERSION, now) for r in rows],
        )


def build(settings: Settings, data: Path, dim: int, labeled: int, seed: int) -> dict[str, Any]:
    """The workspace (see the module docstring); returns what it holds and how long building took."""
    t0 = time.perf_counter()
    probs = np.load(data / "probs.npy")
    labels = _labels(probs.shape[1])
    store = open_store(settings)
    try:
        _insert_pool(store, probs)
        _annotate(store, probs, labeled, labels, seed)
    finally:
        store.close()
    settings.embeddings_dir.mkdir(parents=True, exist_ok=True)
    (settings.embeddings_dir / f"{VERSION}.f16").symlink_to((data / "pool.f16").resolve())
    vdir = settings.registry_dir / VERSION
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "meta.json").write_text(json.dumps({"version": VERSION, "labels": labels, "embedding_dim": dim}))
    (settings.registry_dir / "registry.json").write_text(json.dumps({"active": VERSION, "history": [VERSION]}))
    return {"pool": len(probs), "classes": len(labels), "build_seconds": round(time.perf_counter() - t0, 1)}


def _step(name: str, fn: Any, profile: bool = False) -> tuple[dict[str, Any], Any]:
    load = os.getloadavg()[0]
    prof = cProfile.Profile() if profile else None
    c0, t0 = cpu_seconds(), time.perf_counter()
    if prof:
        prof.enable()
    out = fn()
    if prof:
        prof.disable()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    r = {"step": name, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "load_avg_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}
    print(json.dumps(r))
    if prof:
        pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(25)
    sys.stdout.flush()
    return r, out


def _get_queue(client: Any, n: int, strategy: str) -> Any:
    resp = client.get(f"/v1/queue?n={n}&strategy={strategy}")
    if resp.status_code != 200:
        raise SystemExit(f"GET /v1/queue answered {resp.status_code}: {resp.get_data(as_text=True)[:500]}")
    return resp.get_json()


def measure(settings: Settings, n: int, strategy: str, profile: bool) -> list[dict[str, Any]]:
    app = create_app(settings, {"AUTH_REQUIRED": False, "START_MODEL": False, "JOBS": False})
    client = app.test_client()
    svc = app.extensions["edge_al"]
    steps = []
    try:
        r, _ = _step("parts: store.predictions", lambda: svc.store.predictions(VERSION))
        steps.append(r)
        r, _ = _step("parts: store.annotated_ids", svc.store.annotated_ids)
        steps.append(r)
        r, _ = _step("parts: store.scored_ids", lambda: svc.store.scored_ids(VERSION))
        steps.append(r)
        r, first = _step("GET /v1/queue cold", lambda: _get_queue(client, n, strategy))
        steps.append(r)
        r, _ = _step("GET /v1/queue warm", lambda: _get_queue(client, n, strategy))
        steps.append(r)
        item = first["items"][0]
        body = {"sample_id": item["sample_id"], "action": "accept", "label": item["predicted"]}
        r, resp = _step("POST /v1/annotations (one label)", lambda: client.post("/v1/annotations", json=body))
        if resp.status_code != 200:
            raise SystemExit(f"POST /v1/annotations answered {resp.status_code}: {resp.get_data(as_text=True)[:500]}")
        steps.append(r)
        r, after = _step("GET /v1/queue after a new label", lambda: _get_queue(client, n, strategy), profile)
        steps.append(r)
        assert item["sample_id"] not in {it["sample_id"] for it in after["items"]}
    finally:
        svc.stop()
        svc.store.close()
    return steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a bench_select.py data set (pool.f16, probs.npy)")
    ap.add_argument("--dim", type=int, required=True, help="the data set's embedding width")
    ap.add_argument("--work", type=Path, required=True, help="the workspace: built here once, reused after")
    ap.add_argument("--labeled", type=int, default=10_000)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--strategy", default="hybrid")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fresh-cache", action="store_true", help="remove the version's novelty cache and predictions file first")
    ap.add_argument("--profile", action="store_true", help="cProfile the request after a new label")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    settings = load_settings(home=args.work / "home")
    info: dict[str, Any] = {"cpu": cpu_line(), "numpy": np.__version__, "dim": args.dim, "n": args.n, "strategy": args.strategy}
    if not settings.db_path.exists():
        settings.home.mkdir(parents=True, exist_ok=True)
        info["built"] = build(settings, args.data, args.dim, args.labeled, args.seed)
    if args.fresh_cache:
        shutil.rmtree(settings.embeddings_dir / f"{VERSION}.novelty", ignore_errors=True)
        (settings.embeddings_dir / f"{VERSION}.predictions.npz").unlink(missing_ok=True)
    info["novelty_cache_present"] = (settings.embeddings_dir / f"{VERSION}.novelty").exists()
    info["predictions_file_present"] = (settings.embeddings_dir / f"{VERSION}.predictions.npz").exists()
    print(json.dumps(info))
    steps = measure(settings, args.n, args.strategy, args.profile)
    if args.json:
        args.json.write_text(json.dumps({**info, "steps": steps}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
