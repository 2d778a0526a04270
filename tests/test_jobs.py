"""Jobs on a real huey consumer thread (SQLite storage): states, progress, cancel, retrain trigger,
recovery from a dead worker."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_al.config import Settings
from edge_al.errors import Conflict, InvalidInput, NotFound
from edge_al.jobs import JobContext, JobManager, start_worker_thread
from edge_al.pool import ingest
from edge_al.registry import Registry
from edge_al.store import Store, open_store
from tests.helpers import publish_tiny, write_jpegs

pytestmark = pytest.mark.stores

LABELS = ["a", "b", "c"]


def _wait(manager: JobManager, job_id: int, states: tuple[str, ...], timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = manager.get(job_id)
        if job["state"] in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {states}: {manager.get(job_id)}")


@pytest.fixture
def worker(settings: Settings) -> Iterator[Callable[..., JobManager]]:
    stops: list[Callable[[], None]] = []

    def start(**kw: Any) -> JobManager:
        mgr = JobManager(settings, **kw)
        stops.append(start_worker_thread(settings, manager=mgr, timeout=10))
        return mgr

    yield start
    for stop in stops:
        stop()


def test_score_job_runs_on_a_real_consumer(settings: Settings, store: Store, registry: Registry, tmp_path: Path, worker: Any) -> None:
    publish_tiny(registry, LABELS, size=32, dim=16)
    ingest(store, settings, [str(p) for p in write_jpegs(tmp_path / "pool", 40, size=(64, 48))])
    mgr = worker()
    job = mgr.submit("score", {"batch": 4})
    assert job["state"] == "queued" and job["kind"] == "score" and job["params"] == {"batch": 4}
    done = _wait(mgr, job["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded", done
    assert done["progress"] == 1.0
    assert done["result"]["scored"] == 40 and done["result"]["version"] == "v0001"
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
    assert any("score v0001" in line for line in done["log_tail"])
    assert len(store.scored_ids("v0001")) == 40
    assert [j["id"] for j in mgr.list()] == [job["id"]]


def test_failed_job_keeps_the_message(settings: Settings, worker: Any) -> None:
    mgr = worker()
    job = mgr.submit("score")  # no model yet
    done = _wait(mgr, job["id"], ("succeeded", "failed"))
    assert done["state"] == "failed"
    assert "No model version is active" in done["message"] and "Traceback" not in done["message"]
    assert any("Traceback" in line for line in done["log_tail"])


def test_cancel_queued_and_running(settings: Settings, worker: Any) -> None:
    started = threading.Event()

    def slow(settings: Settings, store: Store, registry: Registry, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        started.set()
        bar = ctx.progress()(total=1000, desc="slow")
        for _ in range(1000):
            time.sleep(0.01)
            bar.update(1)
        return {"summary": "slept"}

    mgr = worker(runners={"score": slow})
    running = mgr.submit("score")
    assert started.wait(20)
    deadline = time.monotonic() + 30  # cancel mid-way: once a progress above 0 is stored (on a loaded box the first flush can lag)
    while mgr.get(running["id"])["progress"] <= 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    queued = mgr.submit("score")  # one worker thread: this one waits
    cancelled = mgr.cancel(queued["id"])
    assert cancelled["state"] == "cancelled" and cancelled["finished_at"] is not None
    asked = mgr.cancel(running["id"])
    assert asked["state"] == "running" and asked["cancel_requested"]
    done = _wait(mgr, running["id"], ("cancelled", "succeeded", "failed"))
    assert done["state"] == "cancelled", done
    assert 0 < done["progress"] < 1
    with pytest.raises(Conflict):
        mgr.cancel(running["id"])
    time.sleep(0.5)
    assert mgr.get(queued["id"])["state"] == "cancelled"  # the revoked task never ran
    with pytest.raises(NotFound):
        mgr.get(999)


def test_submit_validation(settings: Settings) -> None:
    mgr = JobManager(settings)
    with pytest.raises(InvalidInput, match="kind"):
        mgr.submit("train")
    with pytest.raises(InvalidInput, match="Unknown parameter"):
        mgr.submit("score", {"bogus": 1})
    with pytest.raises(InvalidInput, match="batch"):
        mgr.submit("score", {"batch": 0})
    mgr.submit("retrain")
    with pytest.raises(Conflict, match="at most one retrain"):
        mgr.submit("retrain")


def _annotate(store: Store, ids: list[int], start: int = 0) -> None:
    for k, sid in enumerate(ids):
        store.add_annotation(sid, "correct", LABELS[(k + start) % 3], "ann")


def test_maybe_queue_retrain_threshold_and_at_most_one(settings: Settings, store: Store, registry: Registry, tmp_path: Path) -> None:
    publish_tiny(registry, LABELS)
    for name in LABELS:
        store.add_label(name)
    ingest(store, settings, [str(p) for p in write_jpegs(tmp_path / "pool", 12, size=(40, 40))])
    ids = store.sample_ids().tolist()
    mgr = JobManager(settings)  # no consumer: the job stays queued
    _annotate(store, ids[:3])
    assert mgr.annotations_since_model() == 3
    assert mgr.maybe_queue_retrain(4) is None
    _annotate(store, ids[3:5])
    results: list[dict[str, Any] | None] = []
    barrier = threading.Barrier(6)

    def race() -> None:
        barrier.wait()
        results.append(JobManager(settings).maybe_queue_retrain(4))

    ts = [threading.Thread(target=race) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    jobs = [r for r in results if r is not None]
    assert len(jobs) == 1 and jobs[0]["kind"] == "retrain" and jobs[0]["state"] == "queued"
    assert jobs[0]["labels_at_submit"] == 5
    assert mgr.active_retrain() is not None and mgr.active_retrain()["id"] == jobs[0]["id"]  # type: ignore[index]
    _annotate(store, ids[5:10])
    assert mgr.maybe_queue_retrain(4) is None  # one is still queued
    mgr.cancel(jobs[0]["id"])
    second = mgr.maybe_queue_retrain(4)  # 5 annotations arrived after the first was submitted
    assert second is not None and second["id"] != jobs[0]["id"]
    mgr.cancel(second["id"])
    _annotate(store, ids[10:12], start=1)
    assert mgr.maybe_queue_retrain(4) is None  # counted from the last retrain's submission: 2 < 4
    _annotate(store, ids[:2], start=2)
    third = mgr.maybe_queue_retrain(4)
    assert third is not None and third["message"].startswith("queued: 4 new annotations")


def test_dead_worker_job_is_failed_on_start(settings: Settings, store: Store) -> None:
    mgr = JobManager(settings)
    job = mgr.submit("score")
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(proc.stdout.strip())
    import socket

    with store.tx() as c:
        c.execute(
            "UPDATE jobs SET state = 'running', worker = ?, started_at = ?, heartbeat_at = ? WHERE id = ?",
            (f"{socket.gethostname()}:{dead_pid}", time.time(), time.time(), job["id"]),
        )
    stale = mgr.submit("score")
    with store.tx() as c:  # a worker on another box that stopped beating
        c.execute(
            "UPDATE jobs SET state = 'running', worker = 'elsewhere:1', heartbeat_at = ? WHERE id = ?", (time.time() - 3600, stale["id"])
        )
    stop = start_worker_thread(settings, manager=JobManager(settings))
    try:
        for jid in (job["id"], stale["id"]):
            got = mgr.get(jid)
            assert got["state"] == "failed" and got["message"].startswith("worker died"), got
            assert got["finished_at"] is not None
    finally:
        stop()


def test_stats_count_the_same_decisions_with_the_job_system_on_or_off(tmp_path: Path, db_url: str | None) -> None:
    """'Annotations since the model' is one figure: /v1/stats and the retrain trigger agree, jobs on or off."""
    from edge_al.api import create_app
    from tests.api_support import build_workspace

    settings, _ = build_workspace(tmp_path / "ws", n=12, db_url=db_url)
    store = open_store(settings)
    ids = store.sample_ids().tolist()
    label = store.labels()[0]
    store.add_annotation(int(ids[0]), "correct", label, "a")
    store.add_annotation(int(ids[1]), "reject", None, "a")
    store.add_annotation(int(ids[2]), "accept", label, "a")
    figures = []
    for jobs in (True, False):
        app = create_app(settings, {"START_MODEL": False, "JOBS": jobs, "AUTH_REQUIRED": False})
        doc = app.test_client().get("/v1/stats").get_json()
        figures.append(doc["annotations_since_model"])
    assert figures == [3, 3]
    assert JobManager(settings).annotations_since_model() == 3


def test_a_cancelled_bar_stops_its_step_and_leaves_tqdm_usable() -> None:
    """A cancel request stops a tqdm-driven step at its next update, and raising it must not leave
    tqdm's process-wide write lock held (that hung every later progress bar in the process)."""
    from tqdm import tqdm

    from edge_al.jobs import JobCancelled

    class CancellingManager:
        def _report(self, job_id: int, progress: float, lines: list[str]) -> bool:
            return True  # the job's row says: cancel requested

    ctx = JobContext(CancellingManager(), 1, flush_s=0.0)  # type: ignore[arg-type]  # only _report is called
    bar = ctx.progress()(total=10, desc="step")
    with pytest.raises(JobCancelled):
        for _ in range(10):
            bar.update(1)
    with pytest.raises(JobCancelled):
        for _ in ctx.progress()(range(10), desc="loop"):
            pass
    done = threading.Event()

    def later_bar() -> None:
        with tqdm(total=3, disable=False, file=io.StringIO()) as other:
            other.update(3)
        done.set()

    threading.Thread(target=later_bar, daemon=True).start()
    assert done.wait(10), "a later tqdm bar hung on tqdm's lock"
