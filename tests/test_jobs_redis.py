"""Jobs on a real ``redis-server`` (EDGE_AL_HUEY_URL): in-process and ``edge-al worker`` processes,
a bad URL, a broker that is down, and a worker killed (or frozen) mid-job taken over by another.
The takeover tests run on both stores (marker ``stores``): SQLite, as on one box, and a PostgreSQL
database, as the workers of several boxes share it.

Every wait polls an observable condition (a job's state, a marker file) against a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_al.config import Settings
from edge_al.errors import BrokerUnavailable, InvalidInput
from edge_al.jobs import JobContext, JobManager, start_worker_thread
from edge_al.pool import ingest
from edge_al.registry import Registry
from edge_al.store import Store
from tests.helpers import publish_tiny, write_jpegs
from tests.redis_server import RedisServer, redis_server_or_skip, start_redis

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["a", "b", "c"]
FINISHED = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="session")
def redis_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = redis_server_or_skip(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_srv: RedisServer) -> str:
    redis_srv.flush()
    return redis_srv.url(0)


def until(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.05, log: Callable[[], str] | None = None) -> Any:
    """Poll ``check()`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f"\n{log()}" if log else ""))


def _state(mgr: JobManager, job_id: int, states: tuple[str, ...] = FINISHED) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        job = mgr.get(job_id)
        return job if job["state"] in states else None

    return check


class Procs:
    """Worker processes started by a test; all killed at its end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = self.root / f"worker-{len(self.procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, *args], cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, stdout=out, stderr=out
            )
        self.procs.append((proc, log))
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- pid {p.pid} (rc {p.poll()}):\n{log.read_text(errors='replace')[-2000:]}" for p, log in self.procs)

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(10)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    p.stop_all()


# -- in one process -------------------------------------------------------------------------------
def test_score_job_and_cancel_on_redis(settings: Settings, store: Store, registry: Registry, tmp_path: Path, redis_url: str) -> None:
    publish_tiny(registry, LABELS, size=32, dim=16)
    ingest(store, settings, [str(p) for p in write_jpegs(tmp_path / "pool", 20, size=(64, 48))])
    settings = settings.with_(huey_url=redis_url)
    mgr = JobManager(settings)
    assert mgr.backend == "redis"
    stop = start_worker_thread(settings, manager=mgr, timeout=10)
    try:
        done = until("the score job", _state(mgr, mgr.submit("score", {"batch": 4})["id"]))
        assert done["state"] == "succeeded" and done["result"]["scored"] == 20, done
        assert len(store.scored_ids("v0001")) == 20
        started, release = threading.Event(), threading.Event()

        def blocking(settings: Settings, store: Store, registry: Registry, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
            started.set()
            while not release.wait(0.05):
                ctx.check_cancel()
            return {"summary": "released"}

        mgr.runners["score"] = blocking
        running = mgr.submit("score")
        assert started.wait(30)
        queued = mgr.submit("score")  # one worker thread: it waits in Redis
        assert mgr.cancel(queued["id"])["state"] == "cancelled"
        release.set()
        assert until("the blocking job", _state(mgr, running["id"]))["state"] == "succeeded"
        third = mgr.submit("score")  # queued after the revoked one: the revoked one was skipped, not run
        assert until("the third job", _state(mgr, third["id"]))["state"] == "succeeded"
        assert mgr.get(queued["id"])["state"] == "cancelled" and mgr.get(queued["id"])["started_at"] is None
    finally:
        stop()


@pytest.mark.parametrize(
    "url, match",
    [
        ("http://127.0.0.1:6379/0", "must be a redis://"),
        ("redis://127.0.0.1:notaport/0", "not a usable Redis URL"),
        ("redis://127.0.0.1:6379/zero", "must be a number"),
        ("redis:///0", "names no host"),
        ("redis://:s3cret@127.0.0.1:99999/0", "not a usable Redis URL"),
    ],
)
def test_a_bad_redis_url_is_a_clear_error(settings: Settings, url: str, match: str) -> None:
    with pytest.raises(InvalidInput, match=match) as info:
        JobManager(settings.with_(huey_url=url))
    assert "EDGE_AL_HUEY_URL" in str(info.value) and "s3cret" not in str(info.value)


def test_broker_down_at_submit_is_a_clear_error_and_loses_nothing(settings: Settings, store: Store, tmp_path: Path) -> None:
    """Submit: 503-class error, the record failed (nothing half-queued). An automatic retrain: the
    record stays queued and a worker queues it again once Redis is back."""
    own = redis_server_or_skip(tmp_path / "own-redis")
    own.stop()  # the port is known and nothing listens on it
    settings = settings.with_(huey_url=f"redis://:pw@127.0.0.1:{own.port}/0")
    mgr = JobManager(settings, requeue_after_s=0.0)
    with pytest.raises(BrokerUnavailable, match="did not answer") as info:
        mgr.submit("score")
    assert "pw@" not in str(info.value)
    failed = mgr.list()[0]
    assert failed["state"] == "failed" and failed["message"].startswith("Could not queue job")
    for name in LABELS:
        store.add_label(name)
    ingest(store, settings, [str(p) for p in write_jpegs(tmp_path / "pool", 3, size=(40, 40))])
    for sid in store.sample_ids().tolist():
        store.add_annotation(int(sid), "correct", "a", "ann")
    job = mgr.maybe_queue_retrain(3)
    assert job is not None and job["state"] == "queued"
    back = start_redis(own.folder, port=own.port)
    try:
        ran: list[int] = []

        def retrain(settings: Settings, store: Store, registry: Registry, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
            ran.append(ctx.job_id)
            return {"summary": "retrained (stub)"}

        worker_settings = settings.with_(huey_url=f"redis://127.0.0.1:{own.port}/0")
        worker_mgr = JobManager(worker_settings, runners={"retrain": retrain}, requeue_after_s=0.0, recover_every_s=0.1)
        stop = start_worker_thread(worker_settings, manager=worker_mgr, timeout=10)
        try:
            assert until("the retrain queued while Redis was down", _state(mgr, job["id"]))["state"] == "succeeded"
            assert ran == [job["id"]]
        finally:
            stop()
    finally:
        back.stop()


def test_broker_down_is_a_503_problem_from_the_api(settings: Settings, tmp_path: Path) -> None:
    from edge_al.api import create_app

    own = redis_server_or_skip(tmp_path / "own-redis")
    own.stop()
    app = create_app(settings.with_(huey_url=own.url(0)), {"START_MODEL": False, "JOBS": True, "AUTH_REQUIRED": False})
    resp = app.test_client().post("/v1/jobs", json={"kind": "score"})
    assert resp.status_code == 503, resp.get_json()
    body = resp.get_json()
    assert body["type"].endswith("broker-unavailable") and "Nothing was queued" in body["detail"]
    assert resp.headers.get("Retry-After")


# -- real worker processes ------------------------------------------------------------------------
def _gated_worker(procs: Procs, settings: Settings, url: str, gate: Path, *extra: str) -> subprocess.Popen[bytes]:
    db = ["--db", settings.db_url] if settings.db_url else []  # PostgreSQL: the store of every box
    return procs.start(["-m", "tests.job_worker", str(settings.home), url, str(gate), *db, *extra])


def _waiting_on_queue(url: str, n: int, procs: Procs) -> None:
    """Until ``n`` consumers block on the queue (BRPOP): the workers are up before a job is submitted."""
    import redis

    client = redis.Redis.from_url(url)
    until(f"{n} workers to wait on the queue", lambda: sum(c.get("cmd") == "brpop" for c in client.client_list()) >= n, log=procs.logs)


def _runner_of(gate: Path, job_id: int) -> Callable[[], int | None]:
    def check() -> int | None:
        found = sorted(gate.glob(f"started-{job_id}-*"))
        return int(found[0].name.rsplit("-", 1)[1]) if found else None

    return check


@pytest.mark.stores
def test_a_worker_killed_mid_job_is_taken_over_by_another_process(
    settings: Settings, db_backend: str, redis_url: str, tmp_path: Path, procs: Procs
) -> None:
    """Two worker processes on one Redis and one store; kill -9 the one running the job: the other
    retries it (once); kill that one too and a third worker marks the job failed. Never lost."""
    settings = settings.with_(huey_url=redis_url)
    gate = tmp_path / "gate"
    gate.mkdir()
    mgr = JobManager(settings)  # the API side: submits, never consumes
    assert mgr.store.backend.name == db_backend  # on PostgreSQL, the workers get the same database (--db)
    workers = {p.pid: p for p in (_gated_worker(procs, settings, redis_url, gate) for _ in range(2))}
    _waiting_on_queue(redis_url, 2, procs)
    job = mgr.submit("score")
    victim = until("a worker to start the job", _runner_of(gate, job["id"]), log=procs.logs)
    assert victim in workers and mgr.get(job["id"])["worker"].endswith(f":{victim}")
    workers[victim].kill()  # kill -9, mid-job
    workers[victim].wait(10)
    failed = until("the dead worker's job to be taken over", _state(mgr, job["id"]), log=procs.logs)
    assert failed["state"] == "failed" and "worker died" in failed["message"] and "its process is gone" in failed["message"]
    retry_id = int(failed["message"].rsplit("retried as job ", 1)[1])
    survivor = until("the retry to start", _runner_of(gate, retry_id), log=procs.logs)
    assert survivor != victim and survivor in workers
    retry = mgr.get(retry_id)
    assert retry["state"] == "running" and retry["params"] == {"retry_of": job["id"], "attempt": 2} and retry["kind"] == "score"
    assert [j["id"] for j in mgr.list(state="running")] == [retry_id]  # one running copy, never two
    # the retry's worker dies too: a fresh worker finds it and fails it (max_retries=1)
    workers[survivor].kill()
    workers[survivor].wait(10)
    _gated_worker(procs, settings, redis_url, gate)
    last = until("the second death to be recorded", _state(mgr, retry_id), log=procs.logs)
    assert last["state"] == "failed" and "worker died" in last["message"] and "retried" not in last["message"]
    assert mgr.list(state="queued") == [] and mgr.list(state="running") == []
    assert not list(gate.glob("done-*"))  # no copy ever ran to the end


@pytest.mark.stores
def test_a_frozen_worker_is_fenced_off_when_another_takes_its_job(settings: Settings, redis_url: str, tmp_path: Path, procs: Procs) -> None:
    """A worker that is alive but silent (SIGSTOP: a frozen VM, a partitioned box) loses its job after
    ``stale_s``; when it wakes up it learns at its next report that the job is not its own, stops,
    and writes nothing: the job's record keeps the takeover, and only the retry finishes."""
    settings = settings.with_(huey_url=redis_url)
    gate = tmp_path / "gate"
    gate.mkdir()
    mgr = JobManager(settings)
    args = ("--stale", "2", "--heartbeat", "1000")  # the gated job's own reports are the heartbeat
    workers = {p.pid: p for p in (_gated_worker(procs, settings, redis_url, gate, *args) for _ in range(2))}
    # both up before the job exists: no worker's recovery writes to the store while the victim freezes
    # (a process frozen inside a store write transaction would hold the write lock: see deployment.md)
    _waiting_on_queue(redis_url, 2, procs)
    job = mgr.submit("score")
    until("a worker to start the job", _runner_of(gate, job["id"]), log=procs.logs)
    (gate / f"freeze-{job['id']}").write_text("stop yourself")
    frozen = until("the runner to freeze", lambda: sorted(gate.glob(f"frozen-{job['id']}-*")), log=procs.logs)
    victim = int(frozen[0].name.rsplit("-", 1)[1])
    until("the process to be stopped", lambda: Path(f"/proc/{victim}/stat").read_text().split(") ")[1].startswith("T"))
    try:
        failed = until("the silent worker's job to be taken over", _state(mgr, job["id"]), log=procs.logs)
        assert failed["state"] == "failed" and "no heartbeat for" in failed["message"], failed
        retry_id = int(failed["message"].rsplit("retried as job ", 1)[1])
        survivor = until("the retry to start", _runner_of(gate, retry_id), log=procs.logs)
        assert survivor != victim
    finally:
        os.kill(victim, signal.SIGCONT)
    until("the woken worker to stop its stale copy", lambda: (gate / f"stopped-{job['id']}-{victim}").exists(), log=procs.logs)
    assert not (gate / f"done-{job['id']}-{victim}").exists()
    assert workers[victim].poll() is None  # it stopped the job, not itself
    after = mgr.get(job["id"])
    assert after["state"] == "failed" and after["message"] == failed["message"]  # its late end was not written
    (gate / f"release-{retry_id}").write_text("go")
    done = until("the retry to finish", _state(mgr, retry_id), log=procs.logs)
    assert done["state"] == "succeeded" and done["result"]["pid"] == survivor


def test_edge_al_worker_processes_run_a_real_job_from_redis(
    settings: Settings, store: Store, registry: Registry, redis_url: str, tmp_path: Path, procs: Procs
) -> None:
    """``edge-al worker`` itself (the CLI), two of them, on EDGE_AL_HUEY_URL: a score job submitted by
    another process runs once, and SIGTERM stops a worker cleanly."""
    publish_tiny(registry, LABELS, size=32, dim=16)
    ingest(store, settings, [str(p) for p in write_jpegs(tmp_path / "pool", 12, size=(64, 48))])
    env = {"EDGE_AL_HUEY_URL": redis_url}
    workers = [procs.start(["-m", "edge_al", "--home", str(settings.home), "worker"], env=env) for _ in range(2)]
    mgr = JobManager(settings.with_(huey_url=redis_url))
    jobs = [mgr.submit("score", {"batch": 4}) for _ in range(3)]
    done = [until(f"score job {job['id']}", _state(mgr, job["id"]), timeout=120, log=procs.logs) for job in jobs]
    assert [d["state"] for d in done] == ["succeeded"] * 3, (done, procs.logs())
    assert all(sum("started on" in line for line in d["log_tail"]) == 1 for d in done)  # each ran once
    assert len(store.scored_ids("v0001")) == 12
    pids = {mgr.get(j["id"])["worker"].rsplit(":", 1)[1] for j in jobs}
    assert pids <= {str(w.pid) for w in workers}
    _waiting_on_queue(redis_url, 2, procs)  # both in their dequeue loop: huey has set its signal handlers
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        assert w.wait(30) == 0, procs.logs()
