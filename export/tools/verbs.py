"""The ``edge-al`` verbs that live on the build side, registered through the ``edge_al.verbs`` entry point.

``register(sub)`` only adds argument parsers: nothing heavy is imported until a verb runs, and a
verb whose extra is missing says which one to install.
"""

from __future__ import annotations

from typing import Any

from edge_al.argtypes import positive_int

from . import bench_cli, simulate_cli

__all__ = ["register"]


def cmd_demo(ctx: Any) -> int:
    from .demo import run_demo

    return run_demo(ctx)


def _register_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="the main job on a demo pool built from sklearn's digits (needs edge-al[train])")
    # The default: a linear head on EfficientNet-Lite0's frozen ImageNet features, seconds to train.
    p.add_argument("--per-class", type=positive_int, default=5, help="seed labels per class (default 5)")
    p.add_argument("--epochs", type=positive_int, default=15, help="epochs when fine-tuning (--mode finetune; default 15)")
    p.add_argument(
        "--image-size", type=positive_int, default=None, help="model input size (default: the architecture's, 320 for efficientnet_lite0)"
    )
    p.add_argument("--mode", choices=["auto", "head", "finetune"], default=None, help="training mode (default auto: head)")
    p.add_argument("-n", type=positive_int, default=10, help="how many next-to-annotate samples to print (default 10)")
    p.set_defaults(func=cmd_demo)


def register(sub: Any) -> None:
    """Add ``demo``, ``simulate`` and ``bench`` to the ``edge-al`` parser's subcommands."""
    _register_demo(sub)
    simulate_cli.register(sub)
    bench_cli.register(sub)
