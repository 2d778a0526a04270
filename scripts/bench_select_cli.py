#!/usr/bin/env python
"""Issue 2 Scale (3) through the whole CLI: ``edge-al select -n 100 --strategy hybrid`` on a
workspace of 1,000,000 scored samples with 10,000 labeled (synthetic predictions and embeddings
of the default model's size), timed and its peak RSS read with wait4, in a child process.

    .venv/bin/python scripts/bench_select_cli.py [--pool 1000000] [--labeled 10000] [--dim 512] [--work DIR]

scripts/bench_select.py measures the acquisition step alone; this one adds what the CLI does
around it: reading every prediction of the version from SQLite, the labeled set, the
embedding file, and printing the list.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_al.config import Settings
from edge_al.registry import Registry
from edge_al.store import open_store
from export.tools.fixtures import publish_tiny

ROOT = Path(__file__).resolve().parents[1]  # the repository


def build(home: Path, pool: int, labeled: int, dim: int, classes: int, seed: int = 0) -> None:
    settings = Settings(home=home)
    open_store(settings).close()
    labels = [f"c{k}" for k in range(classes)]
    mv = publish_tiny(Registry(settings.registry_dir), labels, dim=dim)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)).astype(np.float32) * 2.0
    now = time.time()
    con = sqlite3.connect(settings.db_path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")  # building the fixture only
    con.executemany("INSERT INTO labels(name, created_at) VALUES (?, ?)", [(n, now) for n in labels])
    emb_path = settings.embeddings_dir / f"{mv.version}.f16"
    emb_path.parent.mkdir(parents=True, exist_ok=True)
    chunk = 100_000
    with open(emb_path, "wb") as f:
        f.write(b"\0" * dim * 2)  # row 0: ids start at 1
        for start in range(1, pool + 1, chunk):
            ids = np.arange(start, min(pool + 1, start + chunk))
            cls = rng.integers(0, classes, len(ids))
            emb = np.maximum(centres[cls] + rng.standard_normal((len(ids), dim)).astype(np.float32), 0)
            f.write(emb.astype(np.float16).tobytes())
            logits = rng.standard_normal((len(ids), classes)).astype(np.float32)
            logits[np.arange(len(ids)), cls] += 2.0
            probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            con.executemany(
                "INSERT INTO samples(id, sha256, path, width, height, source, created_at) VALUES (?, ?, ?, 64, 64, 'bench', ?)",
                [(int(i), f"{i:064x}", f"/pool/{i}.jpg", now) for i in ids],
            )
            con.executemany(
                "INSERT INTO predictions(sample_id, model_version, label_index, confidence, probs, least_confidence, margin, entropy)"
                " VALUES (?, ?, ?, ?, ?, 0, 0, 0)",
                [(int(i), mv.version, int(p.argmax()), float(p.max()), p.tobytes()) for i, p in zip(ids, probs, strict=True)],
            )
            lab = ids[: max(0, min(len(ids), labeled - (start - 1)))]
            con.executemany(
                "INSERT INTO annotations(sample_id, label, action, annotator, created_at) VALUES (?, ?, 'correct', 'bench', ?)",
                [(int(i), labels[int(c)], now) for i, c in zip(lab, cls[: len(lab)], strict=True)],
            )
            con.commit()
    con.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", type=int, default=1_000_000)
    ap.add_argument("--labeled", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512, help="embedding size (resnet18, the default architecture: 512)")
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--work", help="keep the workspace here (reused when present)")
    args = ap.parse_args()
    tmp = None if args.work else Path(tempfile.mkdtemp(prefix="edge-al-select-"))
    home = Path(args.work) if args.work else tmp
    assert home is not None
    try:
        if not (home / "edge-al.sqlite3").exists():
            t0 = time.perf_counter()
            build(home, args.pool, args.labeled, args.dim, args.classes)
            print(f"built {args.pool:,} scored samples ({args.labeled:,} labeled, dim {args.dim}) in {time.perf_counter() - t0:.0f} s")
        cmd = [sys.executable, "-m", "edge_al", "--home", str(home), "--json", "select", "-n", "100", "--strategy", "hybrid"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate()
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the only child
        if proc.returncode != 0:
            print(err.decode()[-2000:])
            return 1
        doc = json.loads(out)
        per_class: dict[str, int] = {}
        for r in doc["selected"]:
            per_class[r["predicted"]] = per_class.get(r["predicted"], 0) + 1
        print(f"edge-al select -n 100 --strategy hybrid on {args.pool:,} samples ({args.labeled:,} labeled, dim {args.dim}):")
        print(
            f"  {wall:.1f} s wall (process start to exit), peak RSS {peak_mb:.0f} MB; selected {len(doc['selected'])}, per predicted class {per_class}"
        )
        print(f"  targets: <= 30 s {'met' if wall <= 30 else 'MISSED'}; <= 2 GB {'met' if peak_mb <= 2048 else 'MISSED'}")
        return 0
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
