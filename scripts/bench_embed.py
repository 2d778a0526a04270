#!/usr/bin/env python3
"""The pool's backbone embeddings (``edge-al embed``, the head's features): one infer request vs every stream.

``edge_al.features.FeatureCache`` computes FP32 embeddings at f32 with ``Engine.infer`` in chunks
of 256 images. Until 2026-12-03 ``infer`` ran them batch by batch on its one infer request, so one
of the compiled model's streams worked and the others idled; now a call of more than one batch
goes through ``Engine.stream`` (an ``AsyncInferQueue``, every stream busy). This times both on the
same engine in turns (the old way is ``infer`` called one batch at a time), checks that they give
the same embeddings bit for bit, and prints img/s and the ratio (name the CPU when you quote it)::

    .venv/bin/python scripts/bench_embed.py --home edge-al-home --images 512 --rounds 3

``--home``: a workspace with a built backbone (``./scripts/demo`` leaves one in ``edge-al-home``).
The images are random u8 at the backbone's input size: inference time does not depend on them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from edge_al.config import Settings
from edge_al.engine import Engine
from edge_al.features import find_backbone
from export.tools.machine import cpu_line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, default=Path("edge-al-home"), help="a workspace with a built backbone")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8, help="the FeatureCache's engine batch")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    backbone = find_backbone(Settings(home=args.home))
    if backbone is None:
        raise SystemExit(f"no backbone in {args.home}: run ./scripts/demo (or edge-al embed) there first")
    size = backbone.image_size
    images = np.random.default_rng(0).integers(0, 256, (args.images, size, size, 3), dtype=np.uint8)
    engine = Engine(backbone.fp32_xml, batch=args.batch, precision="f32")
    engine.infer(images[: 2 * args.batch])  # compile-time work and first-run allocations out of the timing
    print(f"{cpu_line()}; {backbone.arch} {size} px FP32 IR at {engine.precision}, batch {args.batch}, "
          f"{engine.streams} streams, {engine.nireq} infer requests, {args.images} images")  # fmt: skip
    one, every = [], []
    for r in range(args.rounds):
        t = time.perf_counter()
        single = np.concatenate([engine.infer(images[i : i + args.batch])[1] for i in range(0, args.images, args.batch)])
        one.append(args.images / (time.perf_counter() - t))
        t = time.perf_counter()
        _, streamed = engine.infer(images)
        every.append(args.images / (time.perf_counter() - t))
        same = np.array_equal(single, streamed)
        print(f"round {r + 1}: one request {one[-1]:.1f} img/s, every stream {every[-1]:.1f} img/s, "
              f"ratio {every[-1] / one[-1]:.2f}x, identical {same}", flush=True)  # fmt: skip
        if not same:
            raise SystemExit("the two paths disagree: the streamed embeddings are not the single request's")
    print(f"median: one request {np.median(one):.1f} img/s, every stream {np.median(every):.1f} img/s, "
          f"ratio {np.median(np.array(every) / np.array(one)):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
