#!/usr/bin/env python
"""Self-supervised pretraining of a backbone on the unlabeled pool (SimCLR-lite), for ``--weights``.

The pool is the one ``edge-al simulate`` uses (the same split function, split seed and groups
file), so no test image is ever seen, not even unlabeled. No label is read. The result is a
state dict with ``backbone.*`` keys that ``export.train.build_model(..., weights=PATH)`` loads
(the classifier head stays freshly initialised), given to every strategy alike::

    python scripts/pretrain_ssl.py --data DIR [--groups CSV] --image-size 64 --minutes 8 --out ssl.pt
    edge-al simulate --data DIR ... --weights ssl.pt

Method: two augmented views per image (random-resized crop, flips, 90-degree rotations,
brightness/contrast jitter, blur), a 2-layer projection head, NT-Xent loss (temperature 0.2),
AdamW with cosine decay, for a fixed number of epochs or minutes, whichever ends first.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_al.images import decode_resized
from export.tools.simulate import read_dataset, read_groups, split_dataset
from export.train import IMAGENET_MEAN, IMAGENET_STD, build_model, to_tensor


def load_pool(data: Path, groups: Path | None, test_fraction: float, split_seed: int, size: int) -> np.ndarray:
    """uint8 [N, S, S, 3] BGR pool images, decoded as the edge-al cache decodes them."""
    items = read_dataset(data)
    split = split_dataset(items, read_groups(groups) if groups else None, test_fraction, split_seed)
    return np.stack([decode_resized(p.read_bytes(), (size, size)) for p, _ in split.pool])


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random view of a normalised batch [N, 3, S, S]: crop/zoom, flips, rot90, jitter, blur."""
    n = x.shape[0]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    raw = x * std + mean
    scale = torch.empty(n).uniform_(0.35, 1.0, generator=g).sqrt()
    tx = (1 - scale) * torch.empty(n).uniform_(-1, 1, generator=g)
    ty = (1 - scale) * torch.empty(n).uniform_(-1, 1, generator=g)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(raw.shape), align_corners=False)
    raw = F.grid_sample(raw, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    flip = torch.rand(n, generator=g) < 0.5
    raw = torch.where(flip.view(n, 1, 1, 1), raw.flip(3), raw)
    flip = torch.rand(n, generator=g) < 0.5
    raw = torch.where(flip.view(n, 1, 1, 1), raw.flip(2), raw)
    k = int(torch.randint(0, 4, (1,), generator=g))
    raw = torch.rot90(raw, k, dims=(2, 3))
    b = torch.empty(n, 1, 1, 1).uniform_(0.6, 1.4, generator=g)
    c = torch.empty(n, 1, 1, 1).uniform_(0.6, 1.4, generator=g)
    mu = raw.mean(dim=(1, 2, 3), keepdim=True)
    raw = ((raw - mu) * c + mu) * b
    blur = torch.rand(n, generator=g) < 0.3
    if blur.any():
        kernel = torch.tensor([1.0, 2.0, 1.0])
        kernel = (kernel[:, None] * kernel[None, :]) / 16.0
        w = kernel.view(1, 1, 3, 3).repeat(3, 1, 1, 1)
        blurred = F.conv2d(F.pad(raw, (1, 1, 1, 1), mode="reflect"), w, groups=3)
        raw = torch.where(blur.view(n, 1, 1, 1), blurred, raw)
    return (raw.clamp(0, 1) - mean) / std


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    n = z1.shape[0]
    sim.fill_diagonal_(-1e9)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--groups", type=Path)
    ap.add_argument("--test-fraction", type=float, default=0.3)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--minutes", type=float, default=8.0, help="stop after this wall time (whole epochs)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--temperature", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    started = time.time()
    images = load_pool(args.data, args.groups, args.test_fraction, args.split_seed, args.image_size)
    x_all = to_tensor(images)
    model = build_model(args.arch, 2, "none")
    backbone = model.backbone
    dim = model.embedding_dim
    proj = nn.Sequential(nn.Linear(dim, 256), nn.ReLU(inplace=True), nn.Linear(256, 64))
    params = list(backbone.parameters()) + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = max(1, len(images) // args.batch_size)
    budget = args.minutes * 60
    g = torch.Generator().manual_seed(args.seed)
    print(f"pool {len(images)} images at {args.image_size}px; {steps_per_epoch} steps/epoch; budget {args.minutes} min")
    epoch_s = None
    total_epochs = args.epochs
    epoch = 0
    while epoch < total_epochs:
        t0 = time.time()
        backbone.train()
        proj.train()
        order = torch.randperm(len(images), generator=g)
        loss_sum = 0.0
        for step in range(steps_per_epoch):
            # cosine decay over the planned epochs (re-planned after the first epoch's timing)
            frac = (epoch + step / steps_per_epoch) / max(1, total_epochs)
            for group in opt.param_groups:
                group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
            xb = x_all[order[step * args.batch_size : (step + 1) * args.batch_size]]
            z1 = proj(backbone(augment(xb, g)))
            z2 = proj(backbone(augment(xb, g)))
            loss = nt_xent(z1, z2, args.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach())
        epoch += 1
        epoch_s = time.time() - t0
        if epoch == 1:
            left = budget - (time.time() - started)
            total_epochs = max(1, min(args.epochs, 1 + int(left / epoch_s)))
            print(f"epoch 1 took {epoch_s:.1f}s: planning {total_epochs} epochs")
        print(f"epoch {epoch}/{total_epochs} loss {loss_sum / steps_per_epoch:.3f} ({epoch_s:.1f}s)", flush=True)
        if time.time() - started + epoch_s > budget * 1.05:
            break
    # BatchNorm statistics over clean pool images, then save the backbone alone.
    with torch.no_grad():
        for m in backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        backbone.train()
        for i in range(0, len(x_all), 64):
            backbone(x_all[i : i + 64])
    backbone.eval()
    state = {f"backbone.{k}": v.detach().clone() for k, v in backbone.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    print(f"wrote {args.out} after {epoch} epochs in {(time.time() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
