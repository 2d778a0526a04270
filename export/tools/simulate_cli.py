"""The ``edge-al simulate`` verb: active learning against random sampling (see ``export.tools.simulate``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edge_al.argtypes import positive_int
from edge_al.config import ARCHS, AUGMENTS, DEFAULT_ARCH

__all__ = ["register"]


def _strategies(text: str) -> tuple[str, ...]:
    from edge_al.acquisition import STRATEGIES

    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in STRATEGIES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"strategies must be a comma-separated subset of {','.join(STRATEGIES)}; got {text!r}")
    return names


def register(sub: Any) -> None:
    """Add ``simulate`` to the ``edge-al`` parser's subcommands."""
    p = sub.add_parser(
        "simulate",
        help="active-learning simulation on a labeled folder: every strategy vs random, on the production path",
        description="Split DIR (one folder per class) into pool and test set, then per seed and strategy: train, export INT8 "
        "with the gates, score the pool, select, reveal the oracle labels, repeat. Writes learning curves (PNG), every point "
        "(CSV, JSON) and summary.md into --out. Needs edge-al[train].",
    )
    p.add_argument("--data", required=True, type=Path, help="folder with one sub-folder of images per class (the oracle)")
    p.add_argument("--groups", type=Path, help="CSV with columns class, filename, group: split by group (near-copies stay together)")
    p.add_argument("--write-digits", action="store_true", help="first write sklearn's digits as class folders into --data")
    p.add_argument("--digits-classes", default=None, help="with --write-digits: only these digits, e.g. 0,1,2")
    p.add_argument("--digits-limit", type=positive_int, default=None, help="with --write-digits: at most this many images")
    p.add_argument("--strategies", type=_strategies, default=("random", "entropy", "margin", "fre", "knn", "hybrid"),
                   help="comma-separated; must include random (default: random,entropy,margin,fre,knn,hybrid)")  # fmt: skip
    p.add_argument("--seeds", type=positive_int, default=5, help="paired seeds (default 5)")
    p.add_argument("--first-seed", type=int, default=0, help="the first of the paired seeds")
    p.add_argument("--initial", type=positive_int, default=20, help="random initial labels per seed (default 20)")
    p.add_argument("--batch", type=positive_int, default=20, help="labels per round (default 20)")
    p.add_argument("--rounds", type=positive_int, default=5, help="selection rounds after the initial model (default 5)")
    p.add_argument("--test-fraction", type=float, default=0.3, help="share of each class's groups held out (default 0.3)")
    p.add_argument("--split-seed", type=int, default=0, help="the pool/test split (fixed across seeds; default 0)")
    p.add_argument(
        "--image-size", type=positive_int, default=None, help="model input size (default: the architecture's, 320 for efficientnet_lite0)"
    )
    p.add_argument("--epochs", type=positive_int, default=10, help="epochs of the round-0 model and the reference")
    p.add_argument("--warm-epochs", type=positive_int, default=None, help="epochs of warm-started rounds (default: --epochs)")
    p.add_argument("--no-warm-start", action="store_true", help="train every round from --weights instead of the last model")
    p.add_argument("--arch", default=DEFAULT_ARCH, choices=list(ARCHS), help="torchvision architecture")
    p.add_argument("--weights", default=None, help="none, imagenet, or a checkpoint/state dict (default: imagenet where packaged)")
    p.add_argument(
        "--mode", choices=["auto", "head", "finetune"], default=None, help="training mode (default auto: head on a pretrained backbone)"
    )
    p.add_argument("--augment", choices=list(AUGMENTS), default=None,
                   help="flips: heads fitted on the labeled images' flipped views too; flips+tta: and the published models "
                        "average each image's four flips (edge-al train --augment)")  # fmt: skip
    p.add_argument("--no-cold-start", action="store_true", help="skip the row that starts from a typical-and-diverse initial set")
    p.add_argument("--train-batch-size", type=positive_int, default=32, help="training batch size")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: train's, 1e-4 fine-tuning packaged weights, else 1e-3)")
    p.add_argument("--calibration-size", type=positive_int, default=300, help="pool images for INT8 calibration (default 300)")
    p.add_argument("--sample-size", type=positive_int, default=200, help="pool images for the parity/agreement gates (default 200)")
    p.add_argument(
        "--accuracy-control",
        action="store_true",
        help="let a failed INT8 gate retry with NNCF accuracy control, as edge-al export does (off: 20-150 s a model on 2 cores)",
    )
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo", help="torch.onnx exporter (default dynamo)")
    p.add_argument("--no-reference", action="store_true", help="skip the full-data reference models")
    p.add_argument("--reference-seeds", type=positive_int, default=None, help="reference models for the first N seeds only")
    p.add_argument("--reference-epochs", type=positive_int, default=None,
                   help="epochs of the reference (default: --epochs; train's default with another --reference-mode)")  # fmt: skip
    p.add_argument("--reference-mode", choices=["auto", "head", "finetune"], default=None,
                   help="training mode of the reference (default: --mode); finetune: every layer, from the frozen head (minutes an epoch on a CPU)")  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="report folder")
    p.add_argument("--work", type=Path, default=None, help="workspaces (default OUT/work; removed at the end)")
    p.add_argument("--keep-work", action="store_true", help="keep the per-strategy workspaces")
    p.add_argument("--device", default="CPU", help="OpenVINO device for scoring: CPU, GPU, GPU.N or AUTO")
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(ctx: Any) -> int:
    from .simulate import SimConfig, run_simulation, write_digits_folders

    a = ctx.args
    if a.write_digits:
        classes = [int(c) for c in a.digits_classes.split(",")] if a.digits_classes else None
        n = write_digits_folders(a.data, classes=classes, limit=a.digits_limit)
        if not ctx.json:
            print(f"wrote {n} digit images into {a.data}", file=sys.stderr)
    cfg = SimConfig(
        data=a.data, out=a.out, groups=a.groups, strategies=a.strategies, seeds=a.seeds, first_seed=a.first_seed,
        initial=a.initial, batch=a.batch, rounds=a.rounds, test_fraction=a.test_fraction, split_seed=a.split_seed,
        image_size=a.image_size, epochs=a.epochs, warm_epochs=a.warm_epochs, warm_start=not a.no_warm_start, arch=a.arch,
        weights=a.weights, mode=a.mode, augment=a.augment, cold_start=not a.no_cold_start, train_batch_size=a.train_batch_size, lr=a.lr, calibration_size=a.calibration_size,
        sample_size=a.sample_size, reference=not a.no_reference, reference_seeds=a.reference_seeds,
        reference_epochs=a.reference_epochs, reference_mode=a.reference_mode, work=a.work, keep_work=a.keep_work, device=a.device,
        accuracy_control=a.accuracy_control, exporter=a.exporter,
        progress=not ctx.json and not a.quiet,
    )  # fmt: skip
    say = None
    if not ctx.json and not a.quiet:
        from tqdm import tqdm

        def say(text: str) -> None:  # above the progress bar, not glued to it
            tqdm.write(text, file=sys.stderr)

    results = run_simulation(cfg, say)
    ctx.emit(
        {"out": str(a.out), "summary": results["summary"], "elapsed_s": results["elapsed_s"]},
        lambda: print((Path(a.out) / "summary.md").read_text(encoding="utf-8")),
    )
    return 0
