"""A real job worker process (``run_worker``, what ``edge-al worker`` runs) whose ``score`` jobs block
on a file, so a test can kill it mid-job deterministically:

    python -m tests.job_worker HOME REDIS_URL GATE_DIR [--db URL] [--stale S] [--heartbeat S] [--recover-every S]

The store is SQLite in HOME, or the PostgreSQL database ``--db`` names (the workers of several boxes).

A gated job writes ``GATE_DIR/started-<job>-<pid>``, then reports progress (its heartbeat and the
check for a cancel or a takeover) until ``GATE_DIR/release-<job>`` exists, and returns. When the job
is taken away from it, it writes ``GATE_DIR/stopped-<job>-<pid>``; when it ends normally,
``GATE_DIR/done-<job>-<pid>``. When ``GATE_DIR/freeze-<job>`` exists it writes ``frozen-<job>-<pid>``
and stops its own process (SIGSTOP) between two reports, so it holds no store transaction while
frozen (with a long ``--heartbeat`` nothing else in it writes); SIGCONT wakes it.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path
from typing import Any

from edge_al.config import Settings
from edge_al.jobs import JobCancelled, JobContext, JobManager, run_worker
from edge_al.registry import Registry
from edge_al.store import Store


def gated_runner(gate: Path) -> Any:
    def run(settings: Settings, store: Store, registry: Registry, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        me = f"{ctx.job_id}-{os.getpid()}"
        (gate / f"started-{me}").write_text(str(time.time()))
        try:
            while not (gate / f"release-{ctx.job_id}").exists():
                ctx.check_cancel()  # a forced report: heartbeat, and JobCancelled when the job is not ours any more
                if (gate / f"freeze-{ctx.job_id}").exists() and not (gate / f"frozen-{me}").exists():
                    (gate / f"frozen-{me}").write_text(str(time.time()))
                    os.kill(os.getpid(), signal.SIGSTOP)
                time.sleep(0.02)
        except JobCancelled:
            (gate / f"stopped-{me}").write_text(str(time.time()))
            raise
        (gate / f"done-{me}").write_text(str(time.time()))
        return {"summary": f"ran on pid {os.getpid()}", "pid": os.getpid()}

    return run


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("home")
    p.add_argument("huey_url")
    p.add_argument("gate")
    p.add_argument("--db", default=None, help="a postgresql:// URL (default: the SQLite store in HOME)")
    p.add_argument("--stale", type=float, default=300.0)
    p.add_argument("--heartbeat", type=float, default=5.0)
    p.add_argument("--recover-every", type=float, default=0.1)
    a = p.parse_args()
    settings = Settings(home=Path(a.home), huey_url=a.huey_url, db_url=a.db)
    mgr = JobManager(
        settings,
        runners={"score": gated_runner(Path(a.gate))},
        stale_s=a.stale,
        heartbeat_s=a.heartbeat,
        recover_every_s=a.recover_every,
        requeue_after_s=5.0,
    )
    run_worker(settings, manager=mgr)


if __name__ == "__main__":
    main()
