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
from edge_al.storage import images_storage

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
    res = apply_annotations(ctx.store, ctx.registry, seed_rows, storage=images_storage(ctx.settings))
    say(f"[3/6] seed labels: {len(seed_rows)} ({args.per_class} per class; {res.written} new)")
    verbose = not ctx.json and not args.quiet
    published = _train_and_export(ctx, verbose)
    if published is None:
        active = ctx.registry.active()
        precision = str(active.meta.get("precision")).upper() if active else "?"
        say(f"[4/6] model {ctx.registry.active_version()} ({precision}) already active (delete {ctx.settings.home} to start over)")
    else:
        say(f"[4/6] trained and exported {published['version']}: published {published['precision'].upper()}; gates: {published['gates']}")
        if published["validation_note"]:
            say(f"      validation figures: {published['validation_note']}")
    sc = score_pool(ctx.settings, ctx.store, ctx.registry, progress=ctx.progress())
    if sc.scored:
        say(f"[5/6] scored {sc.scored} samples at {sc.images_per_s:.0f} img/s ({sc.engine.get('inference_precision')})")
    else:
        say(f"[5/6] every sample already scored by {sc.version} ({sc.already}): nothing to score")
    cands = select_next(ctx.settings, ctx.store, ctx.registry, args.n, "hybrid")
    if ctx.json:
        doc = {"version": ctx.registry.active_version(), "published": published, "scored": sc.scored, "already_scored": sc.already,
               "selected": [c.as_dict() for c in cands]}  # fmt: skip
        ctx.emit(doc, lambda: None)
        return 0
    print(f"[6/6] next {len(cands)} to annotate (strategy hybrid):")
    print(f"{'rank':>4} {'id':>6} {'guessed':<7} {'conf':>6}  {'reason':<36} path")
    for c in cands:
        print(f"{c.rank:>4} {c.sample_id:>6} {c.predicted:<7} {c.confidence:>6.3f}  {', '.join(c.reason.get('codes', [])):<36} {c.path}")
    home = ctx.settings.home
    exe = Path(sys.executable).parent / "edge-al"
    cli = str(exe) if exe.exists() and shutil.which("edge-al") != str(exe) else "edge-al"
    print("\nnext:")
    print(f"  {cli} --home {home} select -n 20 --csv next.csv     # the list as CSV for annotators (--help: every option)")
    print(f"  {cli} --home {home} annotate decisions.csv          # sample_id,label,action,annotator")
    print(f"  {cli} --home {home} retrain                         # train, export, promote, rescore")
    print(f"  {cli} --home {home} keys add --role admin           # prints an API key once")
    print(f"  {cli} --home {home} serve --port 8000 --with-worker # the HTTP API and the annotation page at /")
    return 0


def _train_and_export(ctx: Context, verbose: bool) -> dict[str, Any] | None:
    """Train and publish the first model (``None`` when one is active already): what was published,
    the gates in one line and the validation note (the figures from a few seed labels are rough)."""
    from edge_al.figures import gate_summary
    from edge_al.status import validation_of
    from export import workflow as wf

    if ctx.registry.active() is not None:
        return None
    args = ctx.args
    ckpt = wf.train_from_store(ctx.settings, ctx.store, arch=DEFAULT_ARCH, image_size=args.image_size, mode=args.mode,
                               epochs=args.epochs, seed=0, progress=verbose)  # fmt: skip
    mv, rep = wf.export_from_store(ctx.settings, ctx.store, ckpt, progress=verbose)
    ctx.registry.promote(mv.version)
    gates = rep.get("gates") or {}
    return {
        "version": mv.version,
        "precision": str(mv.meta.get("precision")),
        "fallback": bool(rep.get("fallback")),
        "gates": gate_summary(rep),
        "gates_passed": {k: bool(v.get("passed")) if isinstance(v, dict) else bool(v) for k, v in gates.items()},
        "validation_note": validation_of(mv.meta)["note"],
    }
