#!/usr/bin/env python3
"""How far do frozen ImageNet features go on a data set? Pooling, layer and resize variants of
EfficientNet-Lite0, each scored by a class-balanced logistic regression on several group splits.

The simulation's full-data reference uses one split (``--split-seed 0``); on a small test set
(magnetic_tile holds out 12 MT_Fray and 18 MT_Crack images) one split's balanced accuracy moves by
several points with the split alone. This script gives the mean and spread over ``--splits`` group
splits (30% of each class's groups held out, ``export.tools.simulate.split_dataset``), for:

- ``head``: the 1,280-d output of the embedding convolution (what edge-al's backbone gives),
  pooled by average (the default), GeM (p=3) or max;
- ``s5``: the 192-d output of the last 192-channel stage, average pooled (mid-level features);
- ``s5+head``: both, concatenated;

for images squashed to ``size x size`` (what edge-al does) and resized with their aspect ratio kept
(short side ``size``, pooled over whatever grid that gives); ``--size`` takes several sizes. Images go through edge-al's own decode
and resize (``edge_al.images``) and ``export.train.to_tensor``. Prints a table; ``--out`` writes JSON.

    .venv/bin/python scripts/bench_features.py --data ../shared/datasets/magnetic_tile \\
        --groups ../shared/datasets/magnetic_tile/groups.csv --splits 5 --out docs/benchmarks/features.json
    .venv/bin/python scripts/bench_features.py --data ../shared/datasets/magnetic_tile \
        --groups ../shared/datasets/magnetic_tile/groups.csv --splits 5 --size 224 256 288 320 384 448 --squash-only \
        --c 0.005 0.05 --out docs/benchmarks/features-sizes.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from edge_al.images import decode, resize_to
from export.efficientnet_lite import efficientnet_lite, load_imagenet
from export.tools.bench import machine_info
from export.tools.simulate import read_dataset, read_groups, split_dataset
from export.train import to_tensor

STAGE5_END = 14  # index of the last block of the 192-channel stage
POOLS = {
    "avg": lambda f: f.mean((2, 3)),
    "gem": lambda f: f.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3),
    "max": lambda f: f.amax((2, 3)),
}
VARIANTS = ("head_avg", "head_gem", "head_max", "s5_avg", "s5_avg+head_avg")


def _resize(img: np.ndarray, size: int, keep_aspect: bool) -> np.ndarray:
    if not keep_aspect:
        return resize_to(img, (size, size))
    h, w = img.shape[:2]
    r = size / min(h, w)
    return resize_to(img, (max(32, round(w * r)), max(32, round(h * r))))


@torch.no_grad()
def features(paths: list[Path], size: int, keep_aspect: bool) -> dict[str, np.ndarray]:
    """Every pooled variant of every image (one image per forward: sizes differ with keep_aspect)."""
    net = efficientnet_lite("efficientnet_lite0")
    load_imagenet(net, "efficientnet_lite0")
    net.eval()
    out: dict[str, list[np.ndarray]] = {}
    for p in paths:
        x = to_tensor(_resize(decode(p.read_bytes()), size, keep_aspect)[None])
        x = net.act(net._bn0(net._conv_stem(x)))
        maps = {}
        for i, block in enumerate(net._blocks):
            x = block(x)
            if i == STAGE5_END:
                maps["s5"] = x
        maps["head"] = net.act(net._bn1(net._conv_head(x)))
        for name, fm in maps.items():
            for pool, fn in POOLS.items():
                out.setdefault(f"{name}_{pool}", []).append(fn(fm)[0].numpy())
    return {k: np.stack(v) for k, v in out.items()}


def score(x: np.ndarray, y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]], c: float) -> list[float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    out = []
    for pool, test in splits:
        scaler = StandardScaler().fit(x[pool])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs convergence notes on the largest C
            m = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(scaler.transform(x[pool]), y[pool])
        out.append(float(balanced_accuracy_score(y[test], m.predict(scaler.transform(x[test])))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a folder with one sub-folder per class")
    ap.add_argument("--groups", type=Path, help="CSV class,filename,group (near-duplicates stay on one side)")
    ap.add_argument("--splits", type=int, default=5, help="group splits (split seeds 0..N-1)")
    ap.add_argument("--size", type=int, nargs="+", default=[224], help="input sizes to try (one run each)")
    ap.add_argument("--squash-only", action="store_true", help="skip the aspect-kept resize (one image per forward: slow)")
    ap.add_argument("--c", type=float, nargs="+", default=[0.005, 0.05], help="inverse regularisation strengths to try")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    items = read_dataset(args.data)
    groups = read_groups(args.groups) if args.groups else None
    index = {p: i for i, (p, _) in enumerate(items)}
    classes = sorted({c for _, c in items})
    y = np.array([classes.index(c) for _, c in items])
    splits = []
    for seed in range(args.splits):
        s = split_dataset(items, groups, 0.3, seed)
        splits.append((np.array([index[p] for p, _ in s.pool]), np.array([index[p] for p, _ in s.test])))
    rows = []
    for size, keep_aspect in [(s, k) for s in args.size for k in ((False,) if args.squash_only else (False, True))]:
        t = time.time()
        feats = features([p for p, _ in items], size, keep_aspect)
        resize = f"short side {size}, aspect kept" if keep_aspect else f"{size}x{size}"
        print(f"features ({resize}) of {len(items)} images: {time.time() - t:.0f} s", flush=True)
        for variant in VARIANTS:
            x = np.concatenate([feats[k] for k in variant.split("+")], axis=1)
            for c in args.c:
                bas = score(x, y, splits, c)
                rows.append({"size": size, "resize": resize, "features": variant, "dim": int(x.shape[1]), "C": c,
                             "mean": float(np.mean(bas)), "sd": float(np.std(bas, ddof=1)) if len(bas) > 1 else 0.0,
                             "split0": bas[0], "per_split": bas})  # fmt: skip
                r = rows[-1]
                print(f"{resize:28s} {variant:16s} {r['dim']:5d}  C={c:<6g} balanced accuracy "
                      f"{r['mean']:.3f} +- {r['sd']:.3f} (split 0: {r['split0']:.3f})", flush=True)  # fmt: skip
    doc = {"data": args.data.name, "splits": args.splits, "size": args.size, "machine": machine_info(), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
