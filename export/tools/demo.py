"""The main job on an embedded default: a demo pool from sklearn's bundled digits.

Writes the digits as PNG files under ``<home>/demo-pool`` (with the true labels in
``truth.csv``, the oracle a real annotator would be), ingests them, seeds a few labels per
class, trains, exports to INT8 with the gates, scores the pool and prints the ranked
selection and the command to serve it.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_al.annotations import apply_annotations
from edge_al.config import DEFAULT_ARCH
from edge_al.pool import ingest

from .digits import write_digits

if TYPE_CHECKING:
    from edge_al.cli import Context

__all__ = ["run_demo", "write_digits_pool"]


def write_digits_pool(root: Path, size: int = 32, limit: int | None = None) -> list[tuple[Path, str]]:
    """Write sklearn's 1,797 digits as ``size`` x ``size`` grayscale PNGs (and truth.csv); returns (path, label)."""
    root.mkdir(parents=True, exist_ok=True)
    out = write_digits(root, size, by_class=False, limit=limit)
    with open(root / "truth.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([(str(p), lab) for p, lab in out])
    return out


def run_demo(ctx: Context) -> int:
    from edge_al.scoring import score_pool
    from edge_al.selection import select_next
    from export import workflow as wf

    args = ctx.args
    say = (lambda *a: None) if ctx.json else print
    pool_dir = ctx.settings.home / "demo-pool"
    items = write_digits_pool(pool_dir)
    say(f"[1/6] demo pool: {len(items)} digit images in {pool_dir}")
    report = ingest(ctx.store, ctx.settings, [pool_dir])
    say(f"[2/6] ingested: {len(report.added)} new, {len(report.duplicates)} already known")
    rng = np.random.default_rng(0)
    by_label: dict[str, list[Path]] = {}
    for path, lab in items:
        by_label.setdefault(lab, []).append(path)
    seed_rows: list[dict[str, Any]] = []
    for lab in sorted(by_label):
        ctx.store.add_label(lab)
        for j in rng.choice(len(by_label[lab]), size=min(args.per_class, len(by_label[lab])), replace=False):
            seed_rows.append({"path": str(by_label[lab][int(j)]), "label": lab, "action": "correct", "annotator": "demo-seed"})
    res = apply_annotations(ctx.store, ctx.registry, seed_rows)
    say(f"[3/6] seed labels: {len(seed_rows)} ({args.per_class} per class; {res.written} new)")
    verbose = not ctx.json and not args.quiet
    if ctx.registry.active() is None:
        ckpt = wf.train_from_store(
            ctx.settings,
            ctx.store,
            arch=DEFAULT_ARCH,
            image_size=args.image_size,
            mode=args.mode,
            epochs=args.epochs,
            seed=0,
            progress=verbose,
        )
        mv, rep = wf.export_from_store(ctx.settings, ctx.store, ckpt, progress=verbose)
        ctx.registry.promote(mv.version)
        say(
            f"[4/6] trained and exported {mv.version} ({mv.meta.get('precision')}); gates: "
            + ", ".join(f"{k}={v.get('passed') if isinstance(v, dict) else v}" for k, v in (rep.get("gates") or {}).items())
        )
    else:
        say(f"[4/6] model {ctx.registry.active_version()} already active (delete {ctx.settings.home} to start over)")
    sc = score_pool(ctx.settings, ctx.store, ctx.registry, progress=ctx.progress())
    say(f"[5/6] scored {sc.scored} samples at {sc.images_per_s:.0f} img/s ({sc.engine.get('inference_precision')})")
    cands = select_next(ctx.settings, ctx.store, ctx.registry, args.n, "hybrid")
    if ctx.json:
        ctx.emit({"version": ctx.registry.active_version(), "selected": [c.as_dict() for c in cands]}, lambda: None)
        return 0
    print(f"[6/6] next {len(cands)} to annotate (strategy hybrid):")
    print(f"{'rank':>4} {'id':>6} {'guess':<6} {'conf':>6} {'score':>7}  path")
    for c in cands:
        print(f"{c.rank:>4} {c.sample_id:>6} {c.predicted:<6} {c.confidence:>6.3f} {c.score:>7.4f}  {c.path}")
    home = ctx.settings.home
    exe = Path(sys.executable).parent / "edge-al"
    cli = str(exe) if exe.exists() and shutil.which("edge-al") != str(exe) else "edge-al"
    print("\nnext:")
    print(f"  {cli} --home {home} select -n 20 --csv next.csv     # the list as CSV for annotators")
    print(f"  {cli} --home {home} annotate decisions.csv          # sample_id,label,action,annotator")
    print(f"  {cli} --home {home} retrain                         # train, export, promote, rescore")
    print(f"  {cli} --home {home} keys add --role admin           # prints an API key once")
    print(f"  {cli} --home {home} serve --port 8000 --with-worker # the HTTP API and the annotation page at /")
    return 0
