"""The ``edge-al`` command: the composition root.

Light verbs (ingest, score, select, annotate, models, status, ...) need only the line-side
dependencies; training verbs (train, export, retrain, demo) reach the ``export`` package
lazily and say which extra to install when it is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import __version__, acquisition
from .argtypes import positive_int
from .config import ARCHS, AUGMENTS, DEFAULT_ARCH, PACKAGED_WEIGHTS, Settings, load_settings
from .errors import EdgeALError
from .figures import gate_summary, validation_note
from .registry import Registry, headline_metrics
from .status import status_doc, validation_of
from .store import Store, open_store

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_ERROR, EXIT_PARTIAL = 0, 1, 3


class Context:
    """What every verb gets: settings, store, registry, and how to print."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings: Settings = load_settings(args.home, args.models)
        self.settings.home.mkdir(parents=True, exist_ok=True)
        self.registry = Registry(self.settings.registry_dir)
        self.json: bool = bool(args.json)
        # With --json, stdout carries exactly one JSON document: the verb runs with sys.stdout
        # pointed at stderr (libraries such as nncf print progress to stdout) and emit() writes here.
        self.out: TextIO = sys.stdout

    @functools.cached_property
    def store(self) -> Store:
        """The workspace's store, opened on first use (a scoring box never opens one)."""
        return open_store(self.settings)

    def cli(self) -> str:
        """``edge-al`` with the workspace options the user passed, for "next:" hints they can copy."""
        parts = ["edge-al"]
        if self.args.home:
            parts += ["--home", str(self.args.home)]
        if self.args.models:
            parts += ["--models", str(self.args.models)]
        return " ".join(parts)

    def progress(self) -> Callable[..., Any] | None:
        if self.json or self.args.quiet:
            return None
        from tqdm import tqdm

        def make(**kw: Any) -> Any:
            return tqdm(dynamic_ncols=True, file=sys.stderr, **kw)

        return make

    def emit(self, doc: Any, human: Callable[[], None]) -> None:
        if self.json:
            json.dump(doc, self.out, indent=2, default=str)
            self.out.write("\n")
            self.out.flush()
        else:
            human()


# -- verbs ------------------------------------------------------------------------------------
def cmd_ingest(ctx: Context) -> int:
    from .pool import ingest

    progress = ctx.progress()

    def wrap(it: Any) -> Any:
        return progress(iterable=it, unit="file", desc="ingest") if progress else it

    report = ingest(
        ctx.store, ctx.settings, ctx.args.paths, labels_from_dirs=ctx.args.labels_from_dirs, progress=wrap if progress else None
    )

    def human() -> None:
        print(f"added {len(report.added)}, duplicates {len(report.duplicates)}, skipped {len(report.skipped)}, labeled {report.labeled}")
        for path, reason in report.skipped:
            print(f"  skipped {path}: {reason}")

    ctx.emit(report.as_dict(), human)
    return EXIT_PARTIAL if report.skipped else EXIT_OK


def _train_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "arch": args.arch,
        "weights": args.weights,
        "mode": args.mode,
        "augment": args.augment,
        "refit": False if args.no_refit else None,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "balance": args.balance,
    }


def cmd_train(ctx: Context) -> int:
    from .lifecycle import workflow

    path = workflow().train_from_store(ctx.settings, ctx.store, progress=not ctx.json and not ctx.args.quiet, **_train_options(ctx.args))
    ctx.emit({"checkpoint": str(path)}, lambda: print(f"checkpoint: {path}\nnext: {ctx.cli()} export {path}"))
    return EXIT_OK


def _latest_checkpoint(settings: Settings) -> Path | None:
    cands = sorted(settings.checkpoints_dir.glob("*.pt"), key=lambda p: p.stat().st_mtime)
    return cands[-1] if cands else None


def cmd_export(ctx: Context) -> int:
    from .lifecycle import workflow

    ckpt = Path(ctx.args.checkpoint) if ctx.args.checkpoint else _latest_checkpoint(ctx.settings)
    if ckpt is None:
        raise EdgeALError(f"No checkpoint to export in {ctx.settings.checkpoints_dir.name}/: run `{ctx.cli()} train` first, or name one.")
    mv, report = workflow().export_from_store(
        ctx.settings, ctx.store, ckpt, max_drop=ctx.args.max_drop, progress=not ctx.json and not ctx.args.quiet
    )
    if ctx.args.promote or ctx.registry.active_version() is None:
        ctx.registry.promote(mv.version)
    active = ctx.registry.active_version()

    def human() -> None:
        fallback = " [FALLBACK: INT8 failed its gates]" if report.get("fallback") else ""
        print(f"published {mv.version} ({mv.meta.get('precision')}){fallback}; gates: {gate_summary(report)}; active: {active}")
        note = validation_of(mv.meta)["note"]
        if note:
            print(f"  validation figures: {note}")

    ctx.emit({"version": mv.version, "active": active, "report": report}, human)
    return EXIT_OK


def cmd_models(ctx: Context) -> int:
    active = ctx.registry.active_version()
    rows = [
        {
            "version": mv.version,
            "active": mv.version == active,
            "precision": mv.meta.get("precision"),
            "arch": mv.meta.get("arch"),
            "num_train_labels": mv.meta.get("num_train_labels"),
            "metrics": headline_metrics(mv.meta),
            "fallback": bool(mv.meta.get("fallback", False)),
            "created_at": mv.meta.get("created_at"),
        }
        for mv in ctx.registry.versions()
    ]

    def human() -> None:
        if not rows:
            print(f"no model versions yet: run `{ctx.cli()} train` and `{ctx.cli()} export`")
        for mv in ctx.registry.versions():
            m = headline_metrics(mv.meta)
            acc, bal = m["accuracy"], m["balanced_accuracy"]
            figures = "" if acc is None or bal is None else f"  val acc={acc:.3f} bal_acc={bal:.3f}"
            fallback = "  [FP32 fallback]" if mv.meta.get("fallback") else ""
            print(
                f"{'*' if mv.version == active else ' '} {mv.version}  {mv.meta.get('arch')}  {mv.meta.get('precision')}"
                f"  trained on {mv.meta.get('num_train_labels')} labels{figures}{fallback}"
            )

    ctx.emit({"active": active, "versions": rows}, human)
    return EXIT_OK


def _compiles(mv: Any) -> None:
    """Compile a version on the CPU: a version that cannot load is never made active."""
    from .engine import Engine

    Engine(mv.xml, device="CPU", batch=1)


def cmd_promote(ctx: Context) -> int:
    mv = ctx.registry.promote(ctx.args.version, load=_compiles)
    ctx.emit({"active": mv.version}, lambda: print(f"active: {mv.version} (rescore with `{ctx.cli()} score`)"))
    return EXIT_OK


def cmd_rollback(ctx: Context) -> int:
    mv = ctx.registry.rollback(load=_compiles)
    ctx.emit({"active": mv.version}, lambda: print(f"active: {mv.version}"))
    return EXIT_OK


def cmd_score(ctx: Context) -> int:
    from .scoring import score_pool

    score: Any = score_pool
    if ctx.args.ray is not None:  # the same scoring as a Ray actor pool (edge-al[ray]); results land in the store alike
        from .predict_ray import score_pool_ray

        score = functools.partial(score_pool_ray, address=ctx.args.ray or None, quiet=ctx.json or ctx.args.quiet)
    if ctx.args.ray is None:
        score = functools.partial(score, reuse=not ctx.args.full_pass)
    report = score(
        ctx.settings, ctx.store, ctx.registry, device=ctx.args.device, batch=ctx.args.batch, progress=ctx.progress(), limit=ctx.args.limit
    )

    def human() -> None:
        e = report.engine
        line = f"scored {report.scored} with {report.version} ({report.already} already scored) in {report.seconds:.1f} s"
        if report.reused:
            line += f"; {report.reused} by its head from {report.reused_from}'s stored embeddings (same backbone)"
        if e:
            line += (f", {(report.scored - report.reused) / max(report.seconds, 1e-9):.0f} img/s on {e.get('device')} "
                     f"[{e.get('inference_precision')}, batch {e.get('batch')}, streams {e.get('streams')}]")  # fmt: skip
        print(line)
        for sid, reason in report.failed:
            print(f"  failed sample {sid}: {reason}")

    ctx.emit(report.as_dict(), human)
    return EXIT_PARTIAL if report.failed else EXIT_OK


def cmd_embed(ctx: Context) -> int:
    from .features import FeatureCache
    from .lifecycle import workflow

    arch = ctx.args.arch
    size = ctx.args.image_size or ctx.settings.image_size_for(arch)
    progress = not ctx.json and not ctx.args.quiet
    backbone = workflow().workspace_backbone(ctx.settings, ctx.store, arch, size, progress=progress)
    ids = np.array(ctx.store.sample_ids(), dtype=np.int64)
    t = time.perf_counter()
    with FeatureCache(ctx.settings, backbone) as cache:
        _, got = cache.get(ctx.store, ids)
    doc = {"backbone": backbone.id, "arch": arch, "image_size": size, "embedded": len(got), "pool_size": len(ids),
           "seconds": round(time.perf_counter() - t, 2)}  # fmt: skip
    ctx.emit(doc, lambda: print(f"embedded {len(got)}/{len(ids)} samples with {arch} at {size} px (backbone {backbone.id})\n"
                                f"next: {ctx.cli()} select -n 20     # typical and diverse, no labels needed"))  # fmt: skip
    return EXIT_OK if len(got) == len(ids) else EXIT_PARTIAL


# What the selection's component scores are, named for what they hold (``margin`` holds 1 - (p1 - p2)).
COLUMN_NAMES = {
    "least_confidence": "1-top1",
    "margin": "1-margin",
    "entropy": "entropy",
    "fre": "fre",
    "knn": "knn_dist",
    "typicality": "typicality",
    "cluster_size": "group_size",
}
COLUMN_LEGEND = {
    "1-top1": "1 - top-1 probability",
    "1-margin": "1 - (top-1 minus top-2 probability): 1 is a coin toss",
    "entropy": "entropy of the class probabilities",
    "fre": "feature reconstruction error vs the labeled images of the guessed class (novelty)",
    "knn_dist": "cosine distance to the nearest labeled image",
    "typicality": "1 / mean distance to its nearest pool neighbours",
    "group_size": "pool images in its group of similar images (none labeled yet)",
}


def selection_order(strategy: str, rows: list[dict[str, Any]]) -> str:
    """One sentence: the order the rows are in, and why it is not plain score order where it is not."""
    comps = rows[0]["components"] if rows else {}
    if "cluster_size" in comps:
        weight = comps.get("uncertainty_weight")
        blend = "" if weight is None else f", mixing typicality with uncertainty at weight {weight:.2f}"
        return (f"rows in pick order: one image from each group of similar pool images that holds no label, largest "
                f"group first{blend}; score = (n - rank + 1) / n")  # fmt: skip
    if strategy == "hybrid":
        return "rows in round-robin order across guessed classes (fewest labels first), so score is not sorted across classes"
    return "rows in score order, highest first"


def _select_columns(rows: list[dict[str, Any]]) -> list[str]:
    return [k for k in COLUMN_NAMES if any(k in r["components"] for r in rows)]


def _write_selection_csv(path: str, rows: list[dict[str, Any]]) -> None:
    keys = _select_columns(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["rank", "sample_id", "path", "predicted", "confidence", "score", *[COLUMN_NAMES[k] for k in keys], "reason"])
        for r in rows:
            comps = [r["components"].get(k, "") for k in keys]
            w.writerow(
                [r["rank"], r["sample_id"], r["path"], r["predicted"], r["confidence"], r["score"], *comps, r["reason"].get("text", "")]
            )


def _print_selection(strategy: str, rows: list[dict[str, Any]]) -> None:
    keys = _select_columns(rows)
    names = [COLUMN_NAMES[k] for k in keys]
    gw = max([len("guessed"), *(len(r["predicted"]) for r in rows)])
    rw = max([len("reason"), *(len(", ".join(r["reason"].get("codes", []))) for r in rows)])
    cols = " ".join(f"{n:>10}" for n in names)
    print(f"{'rank':>4} {'id':>7} {'guessed':<{gw}} {'conf':>6} {'score':>7} {cols} {'reason':<{rw}}  path")
    for r in rows:
        comps = " ".join(f"{r['components'][k]:>10.4f}" if k in r["components"] else f"{'-':>10}" for k in keys)
        reason = ", ".join(r["reason"].get("codes", []))
        print(
            f"{r['rank']:>4} {r['sample_id']:>7} {r['predicted']:<{gw}} {r['confidence']:>6.3f} {r['score']:>7.4f} {comps} {reason:<{rw}}  {r['path']}"
        )
    print(selection_order(strategy, rows))
    for n in names:
        print(f"  {n}: {COLUMN_LEGEND[n]}")


def cmd_select(ctx: Context) -> int:
    from .selection import select_next

    cands = select_next(ctx.settings, ctx.store, ctx.registry, ctx.args.n, ctx.args.strategy, seed=ctx.args.seed)
    rows = [c.as_dict() for c in cands]
    if ctx.args.csv:
        _write_selection_csv(ctx.args.csv, rows)

    def human() -> None:
        if not rows:
            print(f"nothing to select: every scored sample is annotated (ingest more, or run `{ctx.cli()} score`)")
            return
        _print_selection(ctx.args.strategy, rows)

    doc = {"strategy": ctx.args.strategy, "version": ctx.registry.active_version(), "order": selection_order(ctx.args.strategy, rows),
           "selected": rows}  # fmt: skip
    ctx.emit(doc, human)
    return EXIT_OK


def cmd_annotate(ctx: Context) -> int:
    from .annotations import apply_annotations, read_annotation_file
    from .storage import images_storage

    rows = read_annotation_file(ctx.args.file)
    result = apply_annotations(ctx.store, ctx.registry, rows, default_annotator=ctx.args.annotator, create_labels=ctx.args.create_labels,
                               storage=images_storage(ctx.settings))  # fmt: skip

    def human() -> None:
        print(f"written {result.written}, unchanged {result.unchanged}, invalid {len(result.errors)}")
        for e in result.errors:
            print(f"  row {e['row']} ({e['ref']}): {e['reason']}")
        if any("Unknown label" in str(e["reason"]) for e in result.errors):
            print(
                f"next: if those are new classes (a first round defines them), run `{ctx.cli()} annotate --create-labels {ctx.args.file}`"
            )

    ctx.emit(result.as_dict(), human)
    return EXIT_OK if result.ok else EXIT_PARTIAL


def cmd_retrain(ctx: Context) -> int:
    from .lifecycle import retrain

    res = retrain(
        ctx.settings,
        ctx.store,
        ctx.registry,
        train_options={k: v for k, v in _train_options(ctx.args).items() if v is not None},
        export_options={"max_drop": ctx.args.max_drop},
        tolerance=ctx.args.tolerance,
        device=ctx.args.device,
        batch=ctx.args.batch,
        progress=ctx.progress(),
    )

    def human() -> None:
        print(f"{res.version}: {'promoted' if res.promoted else 'not promoted'} ({res.reason})")
        note = validation_note(int(res.metrics_new.get("n", 0)) if res.metrics_new else None, len(ctx.store.labels()))
        if note and res.metrics_new:
            print(f"  validation figures: {note}")
        if res.score:
            print(f"rescored {res.score.scored} samples with {res.score.version}")

    ctx.emit(res.as_dict(), human)
    return EXIT_OK


def cmd_status(ctx: Context) -> int:
    doc = status_doc(ctx.store, ctx.registry)

    def human() -> None:
        print(f"workspace: {ctx.settings.home}")
        print(f"pool: {doc['pool_size']} samples, {doc['labeled']} labeled, {doc['rejected']} rejected, {doc['unlabeled']} unlabeled")
        for name in doc["labels"]:
            print(
                f"  {name:<20} labeled {doc['labeled_per_class'].get(name, 0):>6}   unlabeled predicted {doc['unlabeled_predicted_per_class'].get(name, 0):>7}"
            )
        am = doc["active_model"]
        if am is None:
            print("active model: none")
        else:
            m = am["metrics"]
            figures = (
                ""
                if m["balanced_accuracy"] is None
                else f", validation accuracy {m['accuracy']:.3f}, balanced {m['balanced_accuracy']:.3f}"
            )
            print(f"active model: {am['version']} ({am['precision']}), trained on {am['num_train_labels']} labels{figures}")
            if figures and am["validation"]["note"]:
                print(f"  validation figures: {am['validation']['note']}")
            print(f"scored by active model: {doc['scored_by_active']}/{doc['pool_size']}")

    ctx.emit(doc, human)
    return EXIT_OK


# -- parser -----------------------------------------------------------------------------------
class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if "default" in text or d is None or d is False or d is argparse.SUPPRESS or d == []:
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text
        return f"{text} (default: %(default)s)"


# (flags, kwargs): accepted before or after the verb (`edge-al status --json`, `edge-al ingest X --home H`)
GLOBAL_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--home",), {"default": None, "help": "workspace directory (default: env EDGE_AL_HOME, else ./edge-al-home)"}),
    (("--models",), {"default": None, "help": "model registry directory (default: env EDGE_AL_MODELS, else HOME/models)"}),
    (("--json",), {"action": "store_true", "help": "print one JSON document on stdout instead of text for people"}),
    (("-q", "--quiet"), {"action": "store_true", "help": "no progress bars or progress lines"}),
    (("-v", "--verbose"), {"action": "store_true", "help": "debug logging on stderr"}),
]


def _add_global_options(p: argparse.ArgumentParser, top: bool) -> None:
    """On the top parser with their defaults; on a verb's parser with SUPPRESS defaults, so a value
    given after the verb overrides and an absent one leaves the top parser's value alone."""
    for flags, kw in GLOBAL_OPTIONS:
        if any(f in p._option_string_actions for f in flags):
            continue
        p.add_argument(*flags, **(kw if top else {**kw, "default": argparse.SUPPRESS}))


def _verb_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in dict.fromkeys(action.choices.values()):
                out += [p, *_verb_parsers(p)]
    return out


def existing_path(text: str) -> str:
    """argparse type: a path that exists, checked before any workspace is created."""
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(
            f"{text} does not exist: pass an image file, a folder of images (searched recursively) or a text file "
            "listing image paths, one a line"
        )
    return text


def _add_train_args(p: argparse.ArgumentParser, retrain: bool = False) -> None:
    keep = "; retrain: the active model's" if retrain else ""
    p.add_argument("--arch", default=None if retrain else DEFAULT_ARCH, choices=list(ARCHS),
                   help=f"torchvision architecture (default {DEFAULT_ARCH}{keep})")  # fmt: skip
    p.add_argument(
        "--weights",
        default=None,
        help="imagenet | PATH to a state dict or checkpoint | none (default: imagenet where the train extra ships them, "
        "efficientnet_lite0; none otherwise)",
    )
    p.add_argument(
        "--mode",
        choices=["auto", "head", "finetune"],
        default=None,
        help="head: a linear head on the frozen pretrained backbone (seconds); finetune: the whole network for --epochs; "
        "auto (default): head where pretrained weights are packaged",
    )
    p.add_argument(
        "--augment",
        choices=list(AUGMENTS),
        default=None,
        help="flips: fit the head on each labeled image mirrored, upside down and turned as well, for images whose class "
        "does not depend on orientation (surfaces, textures; not digits or text); flips+tta: that, and the published model "
        "averages the four flipped views of each image (four backbone passes an image on the line); default: EDGE_AL_AUGMENT, else none",
    )
    p.add_argument("--no-refit", action="store_true",
                   help="publish the head fitted without the validation samples (default: after measuring them, the head is "
                   "fitted again on every label; head mode)")  # fmt: skip
    p.add_argument("--image-size", type=positive_int, default=None,
                   help=f"square model input size in pixels (default 320 for efficientnet_lite0, 128 otherwise{keep})")  # fmt: skip
    if retrain:
        p.add_argument("--epochs", type=positive_int, default=None,
                       help="training epochs (default: train's, 15; 4 fine-tuning packaged pretrained weights)")  # fmt: skip
        p.add_argument("--batch-size", type=positive_int, default=None, help="training batch size (default: train's, 32)")
        p.add_argument("--balance", choices=["sampler", "loss", "none"], default=None,
                       help="class balancing for imbalanced sets (default: train's, sampler)")  # fmt: skip
    else:
        p.add_argument("--epochs", type=positive_int, default=None,
                       help="training epochs (default 15; 4 fine-tuning packaged pretrained weights, from the frozen head)")  # fmt: skip
        p.add_argument("--batch-size", type=positive_int, default=32, help="training batch size")
        p.add_argument("--balance", choices=["sampler", "loss", "none"], default="sampler",
                       help="class balancing for imbalanced sets: a class-balanced sampler, a weighted loss, or none")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="random seed of training (the validation split does not depend on it)")


def _add_core_verbs(sub: Any) -> None:
    p = sub.add_parser("ingest", help="register images (files, directories, or text files of paths)")
    p.add_argument("paths", nargs="+", type=existing_path, help="image files, folders (recursive) or text files listing paths")
    p.add_argument("--labels-from-dirs", action="store_true", help="import each image's parent folder name as its annotation")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("train", help="train a classifier on the annotated samples (needs edge-al[train])")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="checkpoint -> ONNX -> IR -> INT8 with gates -> published version")
    p.add_argument("checkpoint", nargs="?", help="checkpoint to export (default: the latest trained)")
    p.add_argument("--max-drop", type=float, default=0.01, help="largest validation accuracy loss INT8 may have vs FP32")
    p.add_argument("--promote", action="store_true", help="make the new version active (the first version always is)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("models", help="list model versions")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("promote", help="activate a model version")
    p.add_argument("version", help="a version from `edge-al models`, e.g. v0002")
    p.set_defaults(func=cmd_promote)
    p = sub.add_parser("rollback", help="go back to the previously active version")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("score", help="score every unscored sample with the active model")
    _add_device_args(p)
    p.add_argument("--limit", type=positive_int, default=None, help="score at most this many samples now (default: all)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="score on a Ray cluster (install edge-al[ray]; image paths on a shared filesystem); default address: RAY_ADDRESS or a local one")  # fmt: skip
    p.add_argument("--full-pass", action="store_true",
                   help="run every image through the model, even where a head-only version could reuse the stored embeddings of an earlier version with the same backbone")  # fmt: skip
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("embed", help="embed the pool with the pretrained backbone: a cold-start selection before any label")
    p.add_argument("--arch", default=DEFAULT_ARCH, choices=list(PACKAGED_WEIGHTS), help="backbone")
    p.add_argument(
        "--image-size", type=positive_int, default=None, help="input size (default: the architecture's, 320 for efficientnet_lite0)"
    )
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("select", help="print the ranked next-to-annotate list")
    p.add_argument("-n", type=positive_int, default=20, help="how many images to list")
    p.add_argument("--strategy", choices=list(acquisition.STRATEGIES), default=acquisition.DEFAULT_STRATEGY,
                   help="acquisition strategy (see the README's Concepts)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the strategies that draw at random (random, k-means)")
    p.add_argument("--csv", help="also write the list to this CSV file (default: none)")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("annotate", help="import decisions from CSV or JSON (sample_id|path, label, action, annotator)")
    p.add_argument("file", help="CSV with columns sample_id or path, label, action (accept|correct|reject), annotator; or JSON")
    p.add_argument("--annotator", default="", help="annotator for rows that name none (default: empty)")
    p.add_argument("--create-labels", action="store_true", help="add unknown labels instead of rejecting the row")
    p.set_defaults(func=cmd_annotate)

    p = sub.add_parser("retrain", help="train -> export -> gates -> promote if not worse -> score")
    _add_train_args(p, retrain=True)
    p.add_argument("--max-drop", type=float, default=0.01, help="largest validation accuracy loss INT8 may have vs FP32")
    p.add_argument("--tolerance", type=float, default=0.02, help="promote when balanced accuracy >= active - tolerance")
    _add_device_args(p)
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("status", help="pool, labels per class, active model")
    p.set_defaults(func=cmd_status)


def _add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU, GPU.N or AUTO (built from the devices present)")
    p.add_argument("--batch", type=positive_int, default=8, help="images per inference request (a static batch)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-al",
        description="Edge active learning on OpenVINO: ingest, train, export, score, select, annotate, retrain, serve.",
        epilog="Global options (--home, --models, --json, -q, -v) go before or after the verb. `edge-al VERB --help` for a verb.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edge-al {__version__}")
    _add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_core_verbs(sub)

    from .api.cli import register as register_service_verbs
    from .predict_cli import register as register_predict

    register_service_verbs(sub)
    register_predict(sub)
    for extra in _extra_verbs():
        extra(sub)
    for p in _verb_parsers(parser):
        p.formatter_class = HelpFormatter
        _add_global_options(p, top=False)
    return parser


def _extra_verbs() -> list[Callable[[Any], None]]:
    """``register(sub)`` of every installed ``edge_al.verbs`` entry point (``demo``, ``simulate`` and
    ``bench`` come from the build side's :mod:`export.tools.verbs`): the line side names no build-side module."""
    return [ep.load() for ep in sorted(entry_points(group="edge_al.verbs"), key=lambda ep: ep.name)]


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    """Warnings once, as one line for people (not the file and source line Python shows by default)."""
    print(f"edge-al: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.showwarning = _show_warning
    try:
        ctx = Context(args)
        if ctx.json:
            with contextlib.redirect_stdout(sys.stderr):
                rc: int = args.func(ctx)
        else:
            rc = args.func(ctx)
        return rc
    except EdgeALError as exc:
        if getattr(args, "json", False):
            json.dump({"error": type(exc).__name__, "detail": str(exc)}, sys.stdout)
            sys.stdout.write("\n")
        print(f"edge-al: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("edge-al: interrupted; progress so far is saved", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    t0 = time.time()
    sys.exit(main())
