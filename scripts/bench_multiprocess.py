#!/usr/bin/env python
"""Several processes on one PostgreSQL store (issue 12): 3 API processes + 2 workers, 8 annotators
for 5 minutes; no lease given twice, every acknowledged annotation stored once, at most one retrain
at a time. Prints the figures; ``--out DIR`` also writes ``multiprocess.json`` and ``multiprocess.md``.

Starts a throwaway PostgreSQL server (Debian's binaries, fsync on; ``scripts/setup-postgres.sh``)
unless ``--db postgresql://...`` names a database to use (it must be empty: the script builds a
workspace in it). The processes, the annotator clients and the checks are export/tools/fleet.py's
(the same as tests/test_store_multiprocess.py, longer and larger). The workers' retrain runner is a
stand-in that reports progress for ``--retrain-seconds``: the job machinery is real, training is not
what is measured.

    python scripts/bench_multiprocess.py                       # the issue's target: 5 minutes
    python scripts/bench_multiprocess.py --minutes 0.5 --annotators 4
    python scripts/bench_multiprocess.py --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from export.tools.fleet import Fleet, format_report, run
from export.tools.machine import cpu_line
from export.tools.postgres import TemporaryPostgres


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=5.0, help="how long the annotators work (default 5)")
    p.add_argument("--annotators", type=int, default=8)
    p.add_argument("--api", type=int, default=3, help="edge-al serve processes")
    p.add_argument("--workers", type=int, default=2, help="job worker processes")
    p.add_argument("--pool", type=int, default=1500, help="images in the pool (the digits: at most 1797)")
    p.add_argument("--lease-seconds", type=int, default=8, help="EDGE_AL_LEASE_SECONDS (short: expiries and hand-overs happen)")
    p.add_argument("--retrain-after", type=int, default=100, help="EDGE_AL_RETRAIN_AFTER")
    p.add_argument("--retrain-seconds", type=float, default=5.0, help="how long the stand-in retrain takes")
    p.add_argument("--db", help="an empty PostgreSQL database to use instead of a temporary server")
    p.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument("--out", type=Path, help="write multiprocess.json and multiprocess.md here")
    return p.parse_args()


def _machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu_line()}; Python {platform.python_version()}; load average {load:.1f} at the end"


def _write(out: Path, args: argparse.Namespace, report: dict[str, Any], text: str, server: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "multiprocess.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **report}, indent=2) + "\n")
    cmd = "python scripts/bench_multiprocess.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k not in {"out", "work", "db"}
    )
    (out / "multiprocess.md").write_text(
        "# Several processes on one PostgreSQL store (issue 12)\n\n"
        "Target: 3 API processes + 2 workers on one PostgreSQL: 8 annotators for 5 minutes, no lease given twice, "
        "every acknowledged annotation stored once, at most one retrain at a time.\n\n"
        f"Command: `{cmd} --out docs/benchmarks`\n\n"
        f"Machine: {_machine()}. Database: {server}. The machine is shared with other engineers' work, so the "
        "request rates are a floor, not a capacity figure; the three properties are what the run checks.\n\n"
        "How each property is checked (export/tools/fleet.py): a trigger logs every change of `leases` in commit order and "
        "no grant may go to another holder while a lease is live; the clients' acknowledged writes (decisions and undos) "
        "are compared with the `annotations` rows, and no sample's history may hold the same decision twice in a row; the "
        "retrain jobs' live windows (queued to finished) must not overlap, and a monitor polls how many are live. The "
        "workers' retrain is a stand-in that takes the set time (the job's queueing, claiming, heartbeats and finishing "
        "are the real code).\n\n"
        "```\n" + text + "\n```\n"
    )


def main() -> int:
    args = _args()
    people = [f"annotator{i}" for i in range(args.annotators)]
    with tempfile.TemporaryDirectory(prefix="edge-al-bench-mp-") as tmp:
        work = args.work or Path(tmp)
        server = None if args.db else TemporaryPostgres(durable=True).start()
        try:
            url = args.db or server.create_database("edge_al_bench")  # type: ignore[union-attr]
            where = "the given --db" if args.db else "PostgreSQL 15, a temporary server on 127.0.0.1 (fsync on)"
            fleet = Fleet(work, url, api=args.api, workers=args.workers, pool=args.pool, lease_seconds=args.lease_seconds,
                          retrain_after=args.retrain_after, retrain_seconds=args.retrain_seconds)  # fmt: skip
            t0 = time.monotonic()
            fleet.start(people)
            print(f"started {args.api} API processes and {args.workers} workers in {time.monotonic() - t0:.0f} s; "
                  f"{args.annotators} annotators for {args.minutes:g} min", flush=True)  # fmt: skip
            try:
                report = run(fleet, people, seconds=args.minutes * 60)
            finally:
                codes = fleet.stop()
            report["exit_codes"] = codes
            text = format_report(report) + f"\nprocess exit codes: {codes}"
            print(text)
            if args.out:
                _write(args.out, args, report, text, where)
        finally:
            if server is not None:
                server.stop()
    return 0 if report["ok"] and not any(codes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
