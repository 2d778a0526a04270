#!/usr/bin/env python3
"""The workspace head's fits on torch's default threads vs one, on a quiet and a busy CPU.

A head round fits a logistic regression on a few hundred 1,280-d embeddings: tensors so small
that torch's intra-op threads only hand work back and forth. On a busy box (a retrain beside the
scoring service, a simulation beside tests) each hand-off waits for a core, so ``export.train``
runs its head fits on one thread (``_one_thread``). This prints the seconds of one
``fit_linear_head`` and one ``choose_head_alpha`` on random embeddings of each size, with the
process's default thread count and with one, first alone, then beside ``--busy`` processes that
spin on every core (a ratio measured in the same run; name the CPU when you quote it)::

    .venv/bin/python scripts/bench_head_fit.py --sizes 50,200,943 --busy 2
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import time
from functools import partial

import numpy as np
import torch

import export.train as train
from export.tools.machine import cpu_line


def _spin(stop: mp.synchronize.Event) -> None:
    x = 0.0
    while not stop.is_set():
        for i in range(100000):
            x += i * 0.5


def _time(fn, threads: int | None) -> float:  # type: ignore[no-untyped-def]
    """Seconds of ``fn()`` with the head's one-thread guard switched off (``threads`` = None: the
    process default) or on."""
    guard = train._one_thread
    if threads is None:
        train._one_thread = contextlib.nullcontext  # type: ignore[assignment]
    try:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    finally:
        train._one_thread = guard


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="50,200,943", help="labeled embeddings per fit")
    ap.add_argument("--busy", type=int, default=2, help="spinning processes for the busy half")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{cpu_line()}; torch {torch.__version__}, default threads {torch.get_num_threads()}")
    print(f"{'load':>6s} {'labels':>6s} {'fit default':>12s} {'fit 1 thread':>12s} {'cv default':>11s} {'cv 1 thread':>11s}")
    for busy in (0, args.busy):
        stop = mp.Event()
        procs = [mp.Process(target=_spin, args=(stop,)) for _ in range(busy)]
        for p in procs:
            p.start()
        try:
            for n in (int(s) for s in args.sizes.split(",")):
                y = np.repeat(np.arange(6), n // 6 + 1)[:n]
                x = (rng.normal(0, 0.3, (6, 1280))[y] + rng.normal(0, 1, (n, 1280))).astype(np.float32)
                stats = train.feature_stats(x)
                fit = [_time(partial(train.fit_linear_head, x, y, 6, stats=stats), t) for t in (None, 1)]
                cv = [_time(partial(train.choose_head_alpha, x, y, 6, stats=stats), t) for t in (None, 1)]
                print(f"{busy:>6d} {n:>6d} {fit[0]:>11.2f}s {fit[1]:>11.2f}s {cv[0]:>10.2f}s {cv[1]:>10.2f}s", flush=True)
        finally:
            stop.set()
            for p in procs:
                p.join()


if __name__ == "__main__":
    main()
