"""The ``edge-al bench`` verb: the speed benchmark of issue 4 (see ``export.tools.bench``)."""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from edge_al.argtypes import positive_float, positive_int
from edge_al.config import ARCHS, DEFAULT_ARCH

__all__ = ["register"]


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 640x480, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"expected a positive WIDTHxHEIGHT, got {text!r}")
    return w, h


def cmd_bench(ctx: Any) -> int:
    from .bench import render_table, run_bench, write_report

    a = ctx.args
    work = Path(a.work) if a.work else Path(tempfile.gettempdir()) / "edge-al-bench"
    quiet = ctx.json or a.quiet

    def log(text: str) -> None:
        if not quiet:
            print(f"bench: {text}", file=sys.stderr, flush=True)

    doc = run_bench(
        work=work,
        images=a.images,
        batch=a.batch,
        arch=a.arch,
        image_size=a.image_size,
        seconds=a.seconds,
        source_size=a.source_size,
        device=a.device,
        log=log,
    )
    command = "edge-al " + shlex.join(sys.argv[sys.argv.index("bench") :] if "bench" in sys.argv else ["bench"])
    paths = write_report(doc, a.out, command=command) if a.out else None
    if paths:
        doc["written"] = [str(p) for p in paths]

    def human() -> None:
        print(render_table(doc))
        if paths:
            print(f"\nwritten: {paths[0]} and {paths[1]}")

    ctx.emit(doc, human)
    return 0


def register(sub: Any) -> None:
    """Add ``bench`` to the CLI's subparsers."""
    p = sub.add_parser(
        "bench",
        help="speed benchmark: edge-al scoring vs benchmark_app, PyTorch eager, ONNX Runtime, FP32 vs INT8",
        description=(
            "Builds (or reuses, under --work) a pool of generated JPEGs and a workspace with an exported INT8 model, "
            "then measures in one run: the benchmark_app ceiling, edge-al scoring (first pass and cached), "
            "the FP32 IR at f32 and at the default precision, PyTorch eager and ONNX Runtime. Needs edge-al[train] "
            "to build the model and for the PyTorch/ONNX Runtime rows (skipped with a reason when missing)."
        ),
    )
    p.add_argument("--images", type=positive_int, default=2000, help="generated pool size (default 2000)")
    p.add_argument("--batch", type=positive_int, default=8, help="static batch for every path (default 8)")
    p.add_argument("--arch", default=DEFAULT_ARCH, choices=list(ARCHS), help="torchvision architecture")
    p.add_argument("--image-size", type=positive_int, default=128, help="model input size (default 128, the CLI default)")
    p.add_argument("--seconds", type=positive_float, default=10.0, help="duration of each timed measurement (default 10)")
    p.add_argument("--source-size", type=_size, default=(640, 480), help="size of the generated JPEGs, WxH (default 640x480)")
    p.add_argument("--out", default="docs/benchmarks", help="folder for bench.json and bench.md ('' to write nothing)")
    p.add_argument("--work", default=None, help="where generated images and the bench workspace are kept (default: TMPDIR/edge-al-bench)")
    p.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU, GPU.N or AUTO")
    p.set_defaults(func=cmd_bench)
