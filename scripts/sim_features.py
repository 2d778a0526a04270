#!/usr/bin/env python3
"""Tune selection strategies in seconds: an active-learning loop on cached frozen features.

`edge-al simulate` runs every round through the whole product (train, export with INT8 gates,
promote, score the pool): the proof, at ~7 s a round. This script keeps only what decides which
samples get labeled and how good the next model is: the workspace head (``export.train.
fit_linear_head``, standardized with the pool's statistics, as ``train_from_store`` does) on
frozen EfficientNet-Lite0 features, and ``edge_al.acquisition.select`` on its probabilities and
the features; a round takes milliseconds, so strategies and their parameters can be compared over
many seeds and several group splits before a `simulate` run confirms the winner.

The features are computed once (torch, FP32, images through edge-al's decode and squash resize)
and kept in ``--cache``. Each strategy is ``name`` or ``label=name:{json params}``::

    .venv/bin/python scripts/sim_features.py --data ../shared/datasets/magnetic_tile \\
        --groups ../shared/datasets/magnetic_tile/groups.csv --size 320 --splits 0 --seeds 5 \\
        --strategy random --strategy margin --strategy hybrid \\
        --strategy 'coverage=hybrid:{"coverage_per_class": null}'

``--flips 50,200,0`` compares instead the head fitted on the labeled images with one fitted on
them and their horizontal, vertical and both-way flips, and that one with its logits averaged
over the four flips of each test image (a test-time augmentation the line would pay 4x for).

``--holdout 0.2`` fits each head without the labels the product's validation split holds out (its
head before it was refitted on every label), to measure what the hold-out costs.

Prints, per strategy, the mean balanced accuracy at each budget, the area under that curve
(mean over budgets) and the final figure with its standard error over seeds x splits. The
initial set of a (split, seed) is one uniform draw shared by every strategy (paired).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from edge_al.acquisition import select
from edge_al.features import VIEWS
from edge_al.images import decode, resize_to
from edge_al.lifecycle import balanced_accuracy
from export.efficientnet_lite import LITE_WEIGHTS, efficientnet_lite, load_imagenet
from export.tools.machine import cpu_line
from export.tools.simulate import labels_to_reach, read_dataset, read_groups, split_dataset
from export.train import HEAD_ALPHA, feature_stats, fit_linear_head, resolve_head_alpha, to_tensor
from export.workflow import val_mask_for

# --flips: the cache key of each view of edge_al.features.VIEWS (the views `train --augment flips` uses)
VIEW_KEYS = {"x": "", "x_h": "h", "x_v": "v", "x_hv": "hv"}


@torch.no_grad()
def frozen_features(paths: list[Path], size: int, batch: int = 32, view: str = "", arch: str = "efficientnet_lite0") -> np.ndarray:
    """float32 [N, 1280]: the EfficientNet-Lite's pooled embedding (what edge-al's backbone gives) of each
    image, flipped as ``edge_al.features.VIEWS[view]`` says."""
    net = efficientnet_lite(arch)
    load_imagenet(net, arch)
    net.eval()
    out = []
    for i in range(0, len(paths), batch):
        images = np.stack([resize_to(decode(p.read_bytes()), (size, size)) for p in paths[i : i + batch]])
        out.append(net.features(to_tensor(np.ascontiguousarray(VIEWS[view](images)))).numpy())
    return np.concatenate(out).astype(np.float32)


def flips_table(
    feats: dict[str, np.ndarray], y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]], budgets: list[int], seeds: int
) -> None:
    """Balanced accuracy of the head fitted on the labeled images (plain), on them and their three
    flips (flip-trained), and the latter with its logits averaged over the four flips of each test
    image (+ test-time flips): mean and SE over splits x seeds, and the paired difference to plain.
    A budget of 0 means every pool image."""
    classes = int(y.max()) + 1
    print(f"{'labels':>6s} {'plain':>14s} {'flip-trained':>22s} {'+ test-time flips':>22s}")
    for budget in budgets:
        rows: list[tuple[float, float, float]] = []
        for pool, test in splits:
            stats = feature_stats(feats["x"][pool])
            for seed in range(seeds if budget else 1):
                lab = np.random.default_rng(seed).choice(pool, budget, replace=False) if budget else pool
                w, b = fit_linear_head(feats["x"][lab], y[lab], classes, stats=stats)
                w2, b2 = fit_linear_head(
                    np.concatenate([feats[v][lab] for v in VIEW_KEYS]), np.tile(y[lab], len(VIEW_KEYS)), classes, stats=stats
                )
                tta = np.mean([feats[v][test] @ w2.T for v in VIEW_KEYS], axis=0) + b2
                rows.append((balanced_accuracy(y[test], (feats["x"][test] @ w.T + b).argmax(1)),
                             balanced_accuracy(y[test], (feats["x"][test] @ w2.T + b2).argmax(1)),
                             balanced_accuracy(y[test], tta.argmax(1))))  # fmt: skip
        a = np.array(rows)
        se = a.std(0, ddof=1) / np.sqrt(len(a)) if len(a) > 1 else np.zeros(3)
        d = a[:, 1:] - a[:, :1]
        dse = d.std(0, ddof=1) / np.sqrt(len(a)) if len(a) > 1 else np.zeros(2)
        cells = [f"{a[:, k].mean():.3f} +- {se[k]:.3f} ({d[:, k - 1].mean():+.3f} +- {dse[k - 1]:.3f})" for k in (1, 2)]
        print(f"{budget or 'all':>6} {a[:, 0].mean():.3f} +- {se[0]:.3f} {cells[0]:>22s} {cells[1]:>22s}", flush=True)


def parse_strategy(text: str) -> tuple[str, str, dict]:
    """``name`` or ``label=name:{json}`` -> (label, strategy name, params)."""
    head, has_params, params = text.partition(":")
    label, has_label, name = head.partition("=")
    return label, name if has_label else label, json.loads(params) if has_params else {}


def head_alpha_arg(value: str) -> float | str:
    """``--alpha``: "auto" or a number; ``export.train.resolve_head_alpha`` (the product's rule) refuses the rest."""
    return value if value == "auto" else float(value)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def run_loop(x: np.ndarray, y: np.ndarray, pool: np.ndarray, test: np.ndarray, init: np.ndarray, strategy: str, params: dict,
             batch: int, rounds: int, seed: int, holdout: float = 0.0, shas: list[str] | None = None,
             alpha: float | str = HEAD_ALPHA) -> list[float]:  # fmt: skip
    """Balanced accuracy on ``test`` after each round (round 0 = the initial set). ``holdout`` > 0:
    the head is fitted without the labels ``export.workflow.val_mask_for`` holds out (by the images'
    ``shas``), as the product did before it refitted on every label."""
    classes = int(y.max()) + 1
    stats = feature_stats(x[pool])
    labeled = [int(i) for i in init]
    curve = []
    for rnd in range(rounds + 1):
        fit = np.array([pool[i] for i in labeled])
        if holdout > 0:
            assert shas is not None
            fit = fit[~val_mask_for([shas[i] for i in fit], y[fit].tolist(), holdout)]
        a = resolve_head_alpha(alpha, x[fit], y[fit], classes, stats)[0]  # a number as given, or auto's CV choice
        w, b = fit_linear_head(x[fit], y[fit], classes, alpha=a, stats=stats)
        curve.append(balanced_accuracy(y[test], (x[test] @ w.T + b).argmax(1)))
        if rnd == rounds:
            break
        rest = np.setdiff1d(np.arange(len(pool)), labeled)
        probs = softmax(x[pool[rest]] @ w.T + b)
        sel = select(strategy, batch, probs, x[pool[rest]], x[pool[labeled]], y[pool[labeled]], num_classes=classes,
                     seed=seed * 1000 + rnd, **params)  # fmt: skip
        labeled += [int(rest[i]) for i in sel.indices]
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a folder with one sub-folder per class")
    ap.add_argument("--groups", type=Path, help="CSV class,filename,group (near-duplicates stay on one side)")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--arch", default="efficientnet_lite0", choices=sorted(LITE_WEIGHTS), help="the frozen backbone")
    ap.add_argument("--cache", type=Path, help="features file (.npz; computed and written when missing)")
    ap.add_argument("--splits", default="0", help="comma-separated split seeds (30%% of each class's groups held out)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--initial", type=int, default=20)
    ap.add_argument("--batch", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--strategy", action="append", default=[], help="name or label=name:{json params}; repeat")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--holdout", type=float, default=0.0, help="fit each head without this fraction of the labels "
                    "(export.workflow.val_mask_for, by content hash): the product before its head was refitted on every label")  # fmt: skip
    ap.add_argument("--alpha", type=head_alpha_arg, default=HEAD_ALPHA, help="the head's L2 strength (default: the product's HEAD_ALPHA), "
                    "or auto: cross-validated on each round's labels (export.train.choose_head_alpha)")  # fmt: skip
    ap.add_argument("--flips", default="", help="instead of strategies: the head with flipped views at these comma-separated "
                    "budgets (0: every pool image), e.g. 50,200,0; needs the flipped images' features (cached beside x)")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    items = read_dataset(args.data)
    classes = sorted({c for _, c in items})
    y = np.array([classes.index(c) for _, c in items])
    feats = dict(np.load(args.cache)) if args.cache and args.cache.is_file() else {}
    for view in VIEW_KEYS if args.flips else ["x"]:
        if view not in feats:
            t = time.time()
            feats[view] = frozen_features([p for p, _ in items], args.size, view=VIEW_KEYS[view], arch=args.arch)
            print(f"{args.arch} features ({view}) of {len(items)} images at {args.size} px: {time.time() - t:.0f} s", flush=True)
            if args.cache:
                np.savez(args.cache, **feats)
    x = feats["x"]
    shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p, _ in items] if args.holdout else None
    groups = read_groups(args.groups) if args.groups else None
    index = {p: i for i, (p, _) in enumerate(items)}
    if args.flips:
        splits = [split_dataset(items, groups, 0.3, int(s)) for s in args.splits.split(",")]
        print(f"{args.data.name}, {args.size} px, splits {args.splits}, {args.seeds} seeds each; {cpu_line()}")
        flips_table(feats, y, [(np.array([index[p] for p, _ in sp.pool]), np.array([index[p] for p, _ in sp.test])) for sp in splits],
                    [int(b) for b in args.flips.split(",")], args.seeds)  # fmt: skip
        return
    strategies = [parse_strategy(s) for s in (args.strategy or ["random", "margin", "hybrid"])]
    curves: dict[str, list[list[float]]] = {label: [] for label, _, _ in strategies}
    t = time.time()
    for split_seed in [int(s) for s in args.splits.split(",")]:
        split = split_dataset(items, groups, 0.3, split_seed)
        pool = np.array([index[p] for p, _ in split.pool])
        test = np.array([index[p] for p, _ in split.test])
        for seed in range(args.seeds):
            rng = np.random.default_rng([seed, split_seed])
            init = rng.choice(len(pool), args.initial, replace=False)
            while len(np.unique(y[pool[init]])) < 2:
                init = rng.choice(len(pool), args.initial, replace=False)
            for label, name, params in strategies:
                curves[label].append(
                    run_loop(x, y, pool, test, init, name, params, args.batch, args.rounds, seed, args.holdout, shas, args.alpha)
                )
    budgets = [args.initial + r * args.batch for r in range(args.rounds + 1)]
    print(
        f"{args.data.name}, {args.size} px, splits {args.splits}, {args.seeds} seeds each, holdout {args.holdout:g}, alpha {args.alpha}; {cpu_line()}; {time.time() - t:.0f} s"
    )
    # the ratio: labels at which the mean curve first reaches random's final, over random's final budget
    target = float(np.mean(curves["random"], axis=0)[-1]) if "random" in curves else None
    print(f"{'strategy':34s} " + " ".join(f"{b:>6d}" for b in budgets) + "    AULC   final +- SE   to random's final")
    for label, c in curves.items():
        a = np.array(c)
        mean, se = a.mean(0), a.std(0, ddof=1) / np.sqrt(len(a)) if len(a) > 1 else np.zeros(a.shape[1])
        reach = None if target is None else labels_to_reach(np.array(budgets), mean, target)
        ratio = "" if target is None else "not reached" if reach is None else f"{reach:.0f} ({reach / budgets[-1]:.2f}x)"
        print(f"{label:34s} " + " ".join(f"{v:6.3f}" for v in mean) + f"   {mean.mean():.3f}   {mean[-1]:.3f} +- {se[-1]:.3f}   {ratio}")


if __name__ == "__main__":
    main()
