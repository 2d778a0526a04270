#!/usr/bin/env python3
"""Does fine-tuning the whole backbone beat the frozen head? One measured answer on a CPU.

The product's default (`--mode auto` with packaged weights) trains a linear head on frozen
EfficientNet-Lite0 features: seconds a round. `--mode finetune` trains every layer: minutes an
epoch on a CPU. This script measures both on the same group split, the same labels and the same
test set, so the switch between them is a measurement, not a guess:

- **frozen head**: the workspace head (`export.train.fit_linear_head`, standardized with the pool's
  statistics, HEAD_ALPHA) on the frozen ImageNet features;
- **fine-tuned**: every layer trained with `export.train`'s augmentation (flips, random-resized crop,
  brightness and contrast), AdamW and a one-cycle schedule, BatchNorm statistics re-estimated
  afterwards as `export.train` does. ``--init probe`` starts the new linear layer from the frozen
  head (linear probing, then fine-tuning: Kumar et al., ICLR 2022), ``--init random`` from a random
  layer, as `--mode finetune` does.

The test set's balanced accuracy (torch, FP32) is printed every ``--eval-every`` epochs. With the
one-cycle schedule only the last figure is what a run of that many epochs gives; the others show
the trend. Example (magnetic_tile, split 0 of `edge-al simulate`, every pool label):

    .venv/bin/python scripts/bench_finetune.py --data ../shared/datasets/magnetic_tile \\
        --groups ../shared/datasets/magnetic_tile/groups.csv --labels 0 --epochs 8 --lr 3e-4
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from edge_al.images import decode, resize_to
from edge_al.lifecycle import balanced_accuracy
from export.tools.machine import cpu_line
from export.tools.simulate import read_dataset, read_groups, split_dataset
from export.train import (
    EmbeddingClassifier,
    _fit,
    _recalibrate_bn,
    _StandardizedLinear,
    build_model,
    feature_stats,
    fit_linear_head,
    predict,
    to_tensor,
)


def load_images(paths: list[Path], size: int) -> np.ndarray:
    """uint8 [N, size, size, 3] BGR, decoded and squashed as edge-al's image cache does."""
    return np.stack([resize_to(decode(p.read_bytes()), (size, size)) for p in paths])


def evaluate(model: EmbeddingClassifier, train_x: torch.Tensor, test_images: np.ndarray, test_y: np.ndarray, bs: int, bn: str) -> float:
    """Balanced accuracy on the test set; with ``bn="train"`` of a copy of ``model`` with re-estimated
    BatchNorm statistics (as ``export.train`` does after training)."""
    m = model
    if bn == "train":
        m = copy.deepcopy(model)
        _recalibrate_bn(m, train_x, bs)
    probs, _ = predict(m, test_images)
    return balanced_accuracy(test_y, probs.argmax(1))


def fine_tune(
    model: EmbeddingClassifier,
    images: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    args: argparse.Namespace,
    evaluate_now: Callable[[], float],
) -> list[dict[str, float]]:
    """Train every layer with ``export.train``'s loop (its augmentation with vertical flips, AdamW,
    one-cycle); the test figure every ``--eval-every`` epochs."""
    curve: list[dict[str, float]] = []
    t = time.time()

    def report(entry: dict[str, float]) -> None:
        epoch = int(entry["epoch"])
        line = f"epoch {epoch}: loss {entry['loss']:.3f}, {time.time() - t:.0f} s"
        if epoch % args.eval_every == 0 or epoch == args.epochs:
            ba = evaluate_now()
            curve.append({"epoch": epoch, "balanced_accuracy": ba})
            line += f", test balanced accuracy {ba:.3f}"
        print(line, flush=True)

    _fit(model, images, y, num_classes, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
         weight_decay=args.weight_decay, seed=args.seed, balance=args.balance, vflip=True, progress=False, tqdm=tqdm,
         freeze_bn=args.bn == "frozen", on_epoch=report)  # fmt: skip
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a folder with one sub-folder per class")
    ap.add_argument("--groups", type=Path, help="CSV class,filename,group (near-duplicates stay on one side)")
    ap.add_argument("--split", type=int, default=0, help="split seed (30%% of each class's groups held out), as `simulate`")
    ap.add_argument("--labels", type=int, default=0, help="labeled pool images, a uniform draw (0: every pool image)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--balance", choices=("sampler", "loss", "none"), default="sampler")
    ap.add_argument("--init", choices=("probe", "random"), default="probe", help="the new linear layer's start")
    ap.add_argument("--bn", choices=("frozen", "train"), default="frozen",
                    help="frozen: BatchNorm keeps ImageNet's statistics (its scale and shift still train); "
                    "train: batch statistics, re-estimated after training, as `--mode finetune` does")  # fmt: skip
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    items = read_dataset(args.data)
    split = split_dataset(items, read_groups(args.groups) if args.groups else None, 0.3, args.split)
    classes = split.classes
    pool_y = np.array([classes.index(c) for _, c in split.pool])
    test_y = np.array([classes.index(c) for _, c in split.test])
    rng = np.random.default_rng([args.seed, args.split])
    chosen = np.arange(len(pool_y)) if args.labels <= 0 else np.sort(rng.choice(len(pool_y), args.labels, replace=False))
    t0 = time.time()
    pool_images = load_images([p for p, _ in split.pool], args.size)
    test_images = load_images([p for p, _ in split.test], args.size)
    print(f"{args.data.name} split {args.split}: {len(chosen)} of {len(pool_y)} pool labels, {len(test_y)} test images, "
          f"{args.size} px; {cpu_line()}; torch {torch.__version__}, {args.threads} threads", flush=True)  # fmt: skip

    model = build_model(args.arch, len(classes), "imagenet")
    t = time.time()
    _, pool_feats = predict(model, pool_images)
    _, test_feats = predict(model, test_images)
    y = pool_y[chosen]
    # the workspace head: standardized with the pool's statistics, folded back into raw-feature weights
    mean, spread = feature_stats(pool_feats)
    w, b = fit_linear_head(pool_feats[chosen], y, len(classes), balance=args.balance, stats=(mean, spread))
    frozen = balanced_accuracy(test_y, (test_feats @ w.T + b).argmax(1))
    print(f"frozen head: balanced accuracy {frozen:.3f} ({time.time() - t:.0f} s with the features)", flush=True)

    # The fine-tuned network's last layer sees standardized features, as the frozen head does: the head
    # folded into raw-feature weights is so steep that the backbone's first steps blow its loss up.
    linear = torch.nn.Linear(len(mean), len(classes))
    start_w, start_b = linear.weight.detach().numpy(), linear.bias.detach().numpy()
    if args.init == "probe":
        start_w, start_b = w * spread[None, :], b + w @ mean
    model.head = _StandardizedLinear(mean, spread, start_w, start_b)  # type: ignore[assignment]  # what `train(linear_probe=True)` trains
    if args.init == "probe":
        start = evaluate(model, to_tensor(pool_images[chosen]), test_images, test_y, args.batch_size, args.bn)
        print(f"fine-tune start (the probe, BN {args.bn}): {start:.3f}", flush=True)

    x_all = to_tensor(pool_images[chosen])
    t = time.time()
    curve = fine_tune(model, pool_images[chosen], y, len(classes), args,
                      lambda: evaluate(model, x_all, test_images, test_y, args.batch_size, args.bn))  # fmt: skip
    result = {"data": args.data.name, "split": args.split, "labels": len(y), "size": args.size, "epochs": args.epochs,
              "lr": args.lr, "balance": args.balance, "init": args.init, "bn": args.bn, "frozen_head": frozen, "curve": curve,
              "finetune_s": round(time.time() - t, 1), "total_s": round(time.time() - t0, 1), "machine": cpu_line()}  # fmt: skip
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if not math.isfinite(curve[-1]["balanced_accuracy"]):
        raise SystemExit("the fine-tuned model's figure is not finite")


if __name__ == "__main__":
    main()
