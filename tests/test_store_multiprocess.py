"""Several processes share one PostgreSQL store: 3 ``edge-al serve`` processes and 2 job workers,
6 annotator clients leasing and deciding through all of them at once (export/tools/fleet.py).
Leases stay exclusive, every acknowledged decision is stored exactly once, and at most one
retrain is queued or running at a time, across processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from export.tools.fleet import Fleet, format_report, run


def test_api_processes_and_workers_share_one_postgres_store(tmp_path: Path, postgres_server: Any) -> None:
    url = postgres_server.create_database()
    fleet = Fleet(tmp_path, url, api=3, workers=2, pool=120, lease_seconds=3, retrain_after=15, retrain_seconds=0.5)
    people = [f"annotator{i}" for i in range(6)]
    fleet.start(people)
    try:
        report = run(fleet, people, rounds=12, walk_away=0.08)
    finally:
        codes = fleet.stop()
    text = format_report(report)
    assert report["ok"], text
    assert codes == [0] * 5, f"exit codes {codes}\n{fleet.log('api0')[-2000:]}"
    # the paths under test were taken: hand-overs between holders, refused late decisions or idle
    # pools are not guaranteed, but decisions, undos, retries and several retrains are
    assert report["annotations"]["acknowledged_writes"] >= 150, text
    assert report["counts"].get("undo 200", 0) > 0 and report["counts"].get("resend 200", 0) > 0, text
    # several retrains, one after another: at least one finished and a later one at least started (the
    # stand-in's 0.5 s can still be running when the 5 s of traffic end: seen once in a CI run)
    states = report["retrains"]["by_state"]
    assert states.get("succeeded", 0) >= 1 and states.get("succeeded", 0) + states.get("running", 0) >= 2, text
    assert report["leases"]["handed_to_another_holder"] > 0, text
