"""Background jobs (retrain, score) on huey, with their records in the edge-al store.

The queue: huey with its SQLite storage at ``<home>/jobs.sqlite3`` (no server needed). For several
boxes set ``EDGE_AL_HUEY_URL=redis://host:6379/0`` (or ``settings.extra["huey_url"]``): the API
boxes enqueue into Redis and ``edge-al worker`` on any box consumes (``pip install 'edge-al[redis]'``;
``edge_al.broker``). The broker holds only task messages; the job *records* live in the store (table
``jobs``), so every worker must see the same store, registry and images (docs/deployment.md).
A broker that is down at submit: ``BrokerUnavailable`` and the record is failed; for an automatic
retrain the record stays queued and a worker queues it again once the broker answers.

A job record: id, kind, state (queued -> running -> succeeded | failed | cancelled), progress 0..1,
message, the last 50 log lines, params, result (JSON), labels at submit, created/started/finished
times, the worker (host:pid) and its heartbeat. Transitions are single-row transactions with a
state guard, so a duplicate or late task message never runs a job twice.

- ``cancel``: a queued job is cancelled at once (and its task revoked); a running one gets a flag
  that the task checks between steps (every progress update); a finished one is a ``Conflict``.
- ``maybe_queue_retrain``: counts the annotations since the active model (and since the last retrain
  job, so a failed or rejected retrain does not re-queue on every annotation) and queues a retrain
  when the count reaches the threshold and none is queued or running, in one store transaction.
- A job left ``running`` by a worker that died (its pid is gone on this host, or no heartbeat for
  ``stale_s`` from any host) is taken over by another worker (``recover``, when a worker starts and
  every ``recover_every_s`` while it runs): failed ("worker died ...; retried as job N") and a copy
  queued in the same transaction, once (``max_retries``); a retry that dies too stays failed. A
  worker that was only slow (a frozen process, a partitioned box) learns at its next heartbeat that
  the job is no longer its own, stops at its next step, and its late result is not written.
"""

from __future__ import annotations

import builtins
import io
import json
import logging
import os
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

from .broker import BROKER_ERRORS, make_huey
from .config import Settings, redact_url
from .errors import BrokerUnavailable, Conflict, EdgeALError, InvalidInput, NotFound
from .lifecycle import annotations_since_model, model_created_at
from .registry import Registry
from .store import Store, open_store

__all__ = [
    "JOB_KINDS",
    "JOB_STATES",
    "JobCancelled",
    "JobContext",
    "JobManager",
    "run_worker",
    "start_worker_thread",
]

log = logging.getLogger(__name__)

JOB_KINDS = ("retrain", "score")
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
_FINISHED = ("succeeded", "failed", "cancelled")
_TASK_NAME = "edge_al.jobs.run"
_LOG_LINES = 50

# allowed params per kind: name -> check(value) -> normalised value
_PARAM_TYPES: dict[str, dict[str, tuple[type | tuple[type, ...], str]]] = {
    "score": {"device": (str, "a string"), "batch": (int, "an int in [1, 256]"), "limit": (int, "an int >= 1")},
    "retrain": {
        "train_options": (dict, "an object"),
        "export_options": (dict, "an object"),
        "tolerance": ((int, float), "a number in [0, 1]"),
        "device": (str, "a string"),
        "batch": (int, "an int in [1, 256]"),
        "rescore": (bool, "a boolean"),
    },
}


class JobCancelled(EdgeALError):
    """Raised inside a running job when a cancel was requested (caught by the job runner)."""


def _validate(kind: str, params: Any) -> dict[str, Any]:
    if kind not in JOB_KINDS:
        raise InvalidInput(f"The 'kind' field must be one of {', '.join(JOB_KINDS)}. Got {kind!r} instead.")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidInput(f"The 'params' field must be an object. Got {type(params).__name__} instead.")
    allowed = _PARAM_TYPES[kind]
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key not in allowed:
            raise InvalidInput(f"Unknown parameter {key!r} for a {kind} job. Valid parameters: {', '.join(sorted(allowed))}.")
        typ, what = allowed[key]
        bad = not isinstance(value, typ) or (typ is not bool and isinstance(value, bool))
        if not bad and key == "batch":
            bad = not 1 <= value <= 256
        elif not bad and key == "limit":
            bad = value < 1
        elif not bad and key == "tolerance":
            bad = not 0 <= float(value) <= 1
        if bad:
            raise InvalidInput(f"The {key!r} parameter must be {what}. Got {value!r} instead.")
        out[key] = value
    try:
        json.dumps(out)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"Job parameters must be JSON values: {exc}") from None
    return out


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _JobBar(tqdm):
    """tqdm whose display is a job's progress (mapped into ``[lo, hi]``) and, every 5 s and at the
    end, a line in its log tail, instead of a terminal: what tqdm-driven steps report inside a job."""

    LOG_EVERY_S = 5.0

    def __init__(self, *args: Any, ctx: JobContext, lo: float, hi: float, **kw: Any) -> None:
        self._ctx, self._lo, self._hi, self._logged = ctx, lo, hi, 0.0
        kw.pop("file", None)
        kw.setdefault("bar_format", "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}]")
        super().__init__(*args, file=io.StringIO(), mininterval=0.5, dynamic_ncols=False, **kw)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Report progress. Never raises: tqdm calls this holding its process-wide write lock, and an
        exception here would leave that lock held and hang every later bar (a cancel request is raised
        from ``update`` and iteration instead, after tqdm let go of the lock)."""
        frac = min(1.0, self.n / self.total) if self.total else 0.0
        try:
            self._ctx.set_progress(self._lo + (self._hi - self._lo) * frac)
        except JobCancelled:
            pass  # raised by update/__iter__
        now = time.monotonic()
        if now - self._logged >= self.LOG_EVERY_S or (self.total and self.n >= self.total):
            self._logged = now
            self._ctx.log(str(self).strip())
        return True

    def _stop_if_cancelled(self) -> None:
        if self._ctx.cancel_requested:
            raise JobCancelled(f"Job {self._ctx.job_id} was cancelled.")

    def update(self, n: float | None = 1) -> bool | None:
        shown = super().update(n)
        self._stop_if_cancelled()
        return shown

    def __iter__(self) -> Iterator[Any]:
        for item in super().__iter__():
            yield item
            self._stop_if_cancelled()


class JobContext:
    """What a running job reports through: progress (throttled writes), log lines, cancel checks."""

    def __init__(self, manager: JobManager, job_id: int, flush_s: float = 0.5) -> None:
        self.manager = manager
        self.job_id = job_id
        self.flush_s = flush_s
        self.lines: deque[str] = deque(maxlen=_LOG_LINES)
        self.progress_value = 0.0
        self.cancel_requested = False
        self._lock = threading.Lock()
        self._last_flush = 0.0
        self._dirty = False

    def log(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        with self._lock:
            for line in str(text).splitlines() or [""]:
                self.lines.append(f"{stamp} {line}"[:2000])
            self._dirty = True

    def set_progress(self, value: float) -> None:
        """Record progress in [0, 1]; written at most every ``flush_s``; raises ``JobCancelled``
        when a cancel was requested (so long steps stop at their next update)."""
        with self._lock:
            self.progress_value = max(self.progress_value, min(1.0, max(0.0, float(value))))
            self._dirty = True
        self.flush()
        if self.cancel_requested:
            raise JobCancelled(f"Job {self.job_id} was cancelled.")

    def check_cancel(self) -> None:
        self.flush(force=True)
        if self.cancel_requested:
            raise JobCancelled(f"Job {self.job_id} was cancelled.")

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_flush < self.flush_s:
                return
            self._last_flush = now
            lines = list(self.lines)
            progress = self.progress_value
        self.cancel_requested = self.manager._report(self.job_id, progress, lines)

    def progress(self, lo: float = 0.0, hi: float = 1.0) -> Callable[..., _JobBar]:
        """A tqdm factory whose bars move the job's progress within ``[lo, hi]``."""

        def make(iterable: Iterable[Any] | None = None, **kw: Any) -> _JobBar:
            return _JobBar(iterable, ctx=self, lo=lo, hi=hi, **kw)

        return make


class _JobLogHandler(logging.Handler):
    """Copies records emitted on one thread into a job's log tail."""

    def __init__(self, ctx: JobContext, thread_id: int) -> None:
        super().__init__(logging.INFO)
        self.ctx = ctx
        self.thread_id = thread_id
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread_id:
            return
        try:
            self.ctx.log(self.format(record))
        except Exception:  # a log line must never break the job
            self.handleError(record)


Runner = Callable[[Settings, Store, Registry, dict[str, Any], JobContext], dict[str, Any]]


def _run_score(settings: Settings, store: Store, registry: Registry, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from .scoring import score_pool

    report = score_pool(
        settings,
        store,
        registry,
        device=params.get("device", "CPU"),
        batch=int(params.get("batch", 8)),
        limit=params.get("limit"),
        progress=ctx.progress(0.0, 1.0),
    )
    result = report.as_dict()
    result["summary"] = f"scored {report.scored} images with {report.version} in {report.seconds:.1f} s ({len(report.failed)} failed)"
    return result


def _run_retrain(settings: Settings, store: Store, registry: Registry, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from .lifecycle import retrain

    ctx.log("retrain: training, export and gates (progress moves when the pool is rescored)")
    ctx.set_progress(0.05)
    res = retrain(
        settings,
        store,
        registry,
        train_options=params.get("train_options"),
        export_options=params.get("export_options"),
        tolerance=float(params.get("tolerance", 0.02)),
        device=params.get("device", "CPU"),
        batch=int(params.get("batch", 8)),
        progress=ctx.progress(0.7, 1.0),
        rescore=bool(params.get("rescore", True)),
    )
    result = res.as_dict()
    result["summary"] = f"{'promoted' if res.promoted else 'not promoted'} {res.version}: {res.reason}"
    return result


_RUNNERS: dict[str, Runner] = {"score": _run_score, "retrain": _run_retrain}


class JobManager:
    """Submit, list, cancel and run jobs of one workspace.

    ``runners`` replaces the functions that do the work (kind -> runner), a seam for tests.
    ``on_model_change`` is called after a job promoted a model (e.g. ``ModelHolder.reload`` when the
    worker runs inside the server); other processes see the promote through the registry.
    Recovery (``recover``): a running job's worker is dead when its process is gone (same host) or
    it wrote no heartbeat (every ``heartbeat_s``) for ``stale_s``; its job is retried up to
    ``max_retries`` times, then failed. A running worker checks every ``recover_every_s``, and
    queues again a queued job whose task message the broker does not hold after ``requeue_after_s``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        huey_url: str | None = None,
        runners: dict[str, Runner] | None = None,
        store: Store | None = None,
        registry: Registry | None = None,
        on_model_change: Callable[[], Any] | None = None,
        stale_s: float = 300.0,
        heartbeat_s: float = 5.0,
        max_retries: int = 1,
        recover_every_s: float = 10.0,
        requeue_after_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.store = store if store is not None else open_store(settings)
        self.registry = registry if registry is not None else Registry(settings.registry_dir)
        self.runners: dict[str, Runner] = {**_RUNNERS, **(runners or {})}
        self.on_model_change = on_model_change
        self.stale_s = float(stale_s)
        self.heartbeat_s = float(heartbeat_s)
        self.max_retries = int(max_retries)
        self.recover_every_s = float(recover_every_s)
        self.requeue_after_s = float(requeue_after_s)
        self.huey_url = huey_url if huey_url is not None else (settings.extra.get("huey_url") or settings.huey_url)
        self.huey = self._make_huey()
        self._task = self.huey.task(name=_TASK_NAME)(self._execute)

    def _make_huey(self) -> Any:
        return make_huey(self.huey_url, self.settings.home)

    @property
    def backend(self) -> str:
        return "redis" if self.huey_url else "sqlite"

    # -- records -------------------------------------------------------------------------------
    @staticmethod
    def _as_dict(row: Any) -> dict[str, Any]:
        return {
            "id": int(row["id"]),
            "kind": row["kind"],
            "state": row["state"],
            "progress": round(float(row["progress"]), 4),
            "message": row["message"],
            "log_tail": json.loads(row["log_tail"] or "[]"),
            "params": json.loads(row["params"] or "{}"),
            "result": json.loads(row["result"]) if row["result"] else None,
            "labels_at_submit": int(row["labels_at_submit"]),
            "cancel_requested": bool(row["cancel_requested"]),
            "worker": row["worker"],
            "created_at": row["created_at"],
            "started_at": row["started_at"],
            "finished_at": row["finished_at"],
        }

    def get(self, job_id: int | str) -> dict[str, Any]:
        """The job as a dict (see docs/api-contract.md); ``NotFound`` for an unknown id."""
        try:
            jid = int(job_id)
        except (TypeError, ValueError):
            raise NotFound(f"Job {job_id!r} does not exist: job ids are integers.") from None
        row = self.store.jobs.get(jid)
        if row is None:
            raise NotFound(f"Job {jid} does not exist.")
        return self._as_dict(row)

    def list(self, limit: int = 50, state: str | None = None, kind: str | None = None) -> builtins.list[dict[str, Any]]:
        """The newest jobs first."""
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidInput(f"The 'limit' parameter must be an int in [1, 1000]. Got {limit!r} instead.")
        if state is not None:
            if state not in JOB_STATES:
                raise InvalidInput(f"The 'state' parameter must be one of {', '.join(JOB_STATES)}. Got {state!r} instead.")
        if kind is not None:
            if kind not in JOB_KINDS:
                raise InvalidInput(f"The 'kind' parameter must be one of {', '.join(JOB_KINDS)}. Got {kind!r} instead.")
        return [self._as_dict(r) for r in self.store.jobs.newest(limit, state, kind)]

    def active_retrain(self) -> dict[str, Any] | None:
        """The queued or running retrain job, if any."""
        row = self.store.jobs.live_retrain()
        return self._as_dict(row) if row is not None else None

    def _labeled_count(self) -> int:
        return len(self.store.labeled()[0])

    # -- submitting ----------------------------------------------------------------------------
    def submit(self, kind: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Queue a job; ``InvalidInput`` for a bad kind or parameter, ``Conflict`` for a second retrain."""
        clean = _validate(kind, params)
        labels = self._labeled_count()
        task = self._task.s(0)
        job_id = self.store.jobs.insert(kind, clean, labels, task.id)
        return self._enqueue(job_id, task)

    def _enqueue(self, job_id: int, task: Any, *, keep_queued: bool = False) -> dict[str, Any]:
        """Send the job's task message. When the broker cannot be reached: ``BrokerUnavailable``, the
        record marked failed (nothing will run it); with ``keep_queued`` the record stays queued and a
        worker's ``recover`` sends it once the broker answers again (nothing is lost)."""
        task.args = (job_id,)
        try:
            self.huey.enqueue(task)
        except BROKER_ERRORS as exc:
            where = f"the Redis broker at {redact_url(self.huey_url)}" if self.huey_url else "the job queue"
            if keep_queued:
                log.warning("job %s: %s did not answer (%s); it stays queued and a worker queues it again", job_id, where, exc)
                return self.get(job_id)
            message = (
                f"Could not queue job {job_id}: {where} did not answer ({type(exc).__name__}). Nothing was queued; retry when it is up."
            )
            self._finish(job_id, "failed", message, None, [])
            raise BrokerUnavailable(message) from None
        except Exception as exc:
            self._finish(job_id, "failed", f"Could not queue the job: {type(exc).__name__}: {exc}", None, [])
            raise
        return self.get(job_id)

    def annotations_since_model(self) -> int:
        """Decisions written since the active model was published (``lifecycle.annotations_since_model``)."""
        return annotations_since_model(self.store, self.registry)

    def maybe_queue_retrain(self, retrain_after: int | None = None, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Queue a retrain when enough annotations arrived; the job, or None.

        Counts annotation rows since the later of the active model's creation and the last retrain
        job's submission; queues when the count is >= ``retrain_after`` (default
        ``settings.retrain_after``) and no retrain is queued or running (one transaction).
        """
        threshold = int(self.settings.retrain_after if retrain_after is None else retrain_after)
        if threshold < 1:
            raise InvalidInput(f"The 'retrain_after' parameter must be an int >= 1. Got {retrain_after!r} instead.")
        clean = _validate("retrain", params)
        mv = self.registry.active()
        labels = self._labeled_count()
        task = self._task.s(0)
        job_id = self.store.jobs.insert_retrain_if_due(model_created_at(mv) if mv is not None else 0.0, threshold, clean, labels, task.id)
        if job_id is None:
            return None
        return self._enqueue(job_id, task, keep_queued=True)

    # -- cancelling ----------------------------------------------------------------------------
    def cancel(self, job_id: int | str) -> dict[str, Any]:
        """Cancel a queued job now, ask a running one to stop; ``Conflict`` when it has finished."""
        job = self.get(job_id)
        jid = job["id"]
        state, task_id = self.store.jobs.cancel(jid)
        if state not in ("queued", "running"):
            raise Conflict(
                f"Job {jid} has already {'been ' if state == 'cancelled' else ''}{state}; only queued or running jobs can be cancelled."
            )
        if task_id:
            try:
                self.huey.revoke_by_id(task_id, revoke_once=True)
            except Exception:  # the state guard stops it anyway
                log.warning("could not revoke task %s of job %s", task_id, jid, exc_info=True)
        return self.get(jid)

    # -- running -------------------------------------------------------------------------------
    def _report(self, job_id: int, progress: float, lines: builtins.list[str]) -> bool:
        """Write progress, log tail and heartbeat of a running job; returns its cancel flag."""
        return self.store.jobs.report(job_id, progress, lines)

    def _finish(
        self, job_id: int, state: str, message: str, result: dict[str, Any] | None, lines: builtins.list[str], progress: float | None = None
    ) -> None:
        self.store.jobs.finish(job_id, state, message, result, lines, progress)

    def _claim(self, job_id: int) -> dict[str, Any] | None:
        return self.get(job_id) if self.store.jobs.claim(job_id, _worker_id()) else None

    def run_job(self, job_id: int) -> dict[str, Any] | None:
        """Run one queued job on the calling thread (what the huey task does); the finished job,
        or None when it was not queued (cancelled, unknown, or already taken)."""
        job = self._claim(int(job_id))
        if job is None:
            log.info("job %s is not queued any more; skipped", job_id)
            return None
        jid = job["id"]
        ctx = JobContext(self, jid)
        active_before = self.registry.active_version()
        with self._attached(ctx, jid):
            ctx.log(f"job {jid} ({job['kind']}) started on {_worker_id()}")
            state, message, result, progress = self._run_runner(job, ctx)
        ctx.log(f"job {jid} {state}: {message}")
        self._finish(jid, state, message, result, list(ctx.lines), progress)
        if self.on_model_change is not None and self.registry.active_version() != active_before:
            try:
                self.on_model_change()
            except Exception:
                log.warning("job %s: the model-change hook failed", jid, exc_info=True)
        return self.get(jid)

    @contextmanager
    def _attached(self, ctx: JobContext, jid: int) -> Iterator[None]:
        """While a job runs: its thread's edge_al/export log lines go to its log tail, and a heartbeat
        thread flushes progress every ``heartbeat_s`` (what ``recover`` reads to find dead workers)."""
        handler = _JobLogHandler(ctx, threading.get_ident())
        loggers = [logging.getLogger(name) for name in ("edge_al", "export")]
        for lg in loggers:
            lg.addHandler(handler)
        stop_beat = threading.Event()

        def beat() -> None:
            while not stop_beat.wait(self.heartbeat_s):
                try:
                    ctx.flush(force=True)
                except Exception:
                    log.warning("job %s: heartbeat failed", jid, exc_info=True)

        beater = threading.Thread(target=beat, name=f"edge-al-job-{jid}-heartbeat", daemon=True)
        beater.start()
        try:
            yield
        finally:
            stop_beat.set()
            beater.join(timeout=5)
            for lg in loggers:
                lg.removeHandler(handler)

    def _run_runner(self, job: dict[str, Any], ctx: JobContext) -> tuple[str, str, Any, float | None]:
        """``(state, message, result, progress)`` of running the job's runner; never raises."""
        try:
            result = self.runners[job["kind"]](self.settings, self.store, self.registry, job["params"], ctx)
        except JobCancelled:
            ctx.log("cancelled while running")
            return "cancelled", "cancelled while running", None, None
        except EdgeALError as exc:
            ctx.log(traceback.format_exc())
            return "failed", str(exc), None, None
        except Exception as exc:
            ctx.log(traceback.format_exc())
            return "failed", f"{type(exc).__name__}: {exc}", None, None
        message = str(result.get("summary") or "done") if isinstance(result, dict) else "done"
        if ctx.cancel_requested:
            message += " (the cancel request came after the last step; the job had finished)"
        return "succeeded", message, result, 1.0

    def _execute(self, job_id: int) -> None:
        try:
            self.run_job(job_id)
        except Exception:  # the job row says what happened; keep the consumer alive
            log.exception("job %s: runner crashed", job_id)

    # -- recovery ------------------------------------------------------------------------------
    def recover(self, requeue_after_s: float | None = None) -> builtins.list[int]:
        """Take over the jobs of dead workers; queue again queued jobs whose task message was lost.

        A running job's worker is dead when its process is gone (same host) or it has not beaten for
        ``stale_s`` (any host). Such a job is failed ("worker died") and, while it has had fewer than
        ``1 + max_retries`` attempts, a copy is queued in the same transaction (its params carry
        ``retry_of`` and ``attempt``), so exactly one worker's ``recover`` wins and the job is
        neither lost nor run twice by the queue. Returns the ids of the jobs failed. Every worker
        calls this when it starts and every ``recover_every_s`` while it runs.
        """
        dead = self._reap_dead()
        self._requeue_lost(self.requeue_after_s if requeue_after_s is None else requeue_after_s)
        return dead

    def _death_reason(self, worker: str, heartbeat_at: float | None, now: float) -> str | None:
        """Why the worker of a running job counts as dead, or None while it may be alive."""
        if not worker:
            return "no worker recorded"
        whost, _, wpid = worker.rpartition(":")
        if whost == socket.gethostname() and wpid.isdigit() and int(wpid) != os.getpid() and not _pid_alive(int(wpid)):
            return "its process is gone"
        silent = now - float(heartbeat_at or 0.0)
        return f"no heartbeat for {silent:.0f} s" if silent > self.stale_s else None

    def _reap_dead(self) -> builtins.list[int]:
        now = time.time()
        dead: builtins.list[int] = []
        for row in self.store.jobs.running():
            worker = row["worker"] or ""
            reason = self._death_reason(worker, row["heartbeat_at"], now)
            if reason is None:
                continue
            jid, params = int(row["id"]), json.loads(row["params"] or "{}")
            message = f"worker died ({worker or 'unknown'}: {reason})"
            attempt = int(params.get("attempt", 1))
            if attempt > self.max_retries:
                if self.store.jobs.fail_running(jid, message):
                    dead.append(jid)
                    log.warning("job %s: %s; attempt %d was the last: marked failed", jid, message, attempt)
                continue
            task = self._task.s(0)
            new_id = self.store.jobs.retry_running(jid, message, {**params, "retry_of": jid, "attempt": attempt + 1}, task.id)
            if new_id is not None:
                dead.append(jid)
                log.warning("job %s: %s; retried as job %s", jid, message, new_id)
                self._enqueue(new_id, task, keep_queued=True)
        return dead

    def _requeue_lost(self, older_than_s: float) -> None:
        queued = self.store.jobs.queued_before(time.time() - older_than_s)
        if not queued:
            return
        try:
            pending = {t.id for t in self.huey.pending()}
        except Exception as exc:  # a broker that is down (or a locked SQLite queue): check again next time
            log.warning("cannot read the job queue (%s): queued jobs are checked again later", type(exc).__name__)
            return
        for row in queued:
            if row["task_id"] not in pending:
                task = self._task.s(int(row["id"]))
                self.store.jobs.set_task(int(row["id"]), task.id)
                self._enqueue(int(row["id"]), task, keep_queued=True)
                log.warning("job %s: its task message was lost; queued again", row["id"])

    def start_reaper(self, every_s: float | None = None) -> Callable[[], None]:
        """Run ``recover`` every ``every_s`` (default ``recover_every_s``) on a daemon thread; returns ``stop()``."""
        period = self.recover_every_s if every_s is None else float(every_s)
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(period):
                try:
                    self.recover()
                except Exception:  # a store or broker hiccup: try again next period
                    log.warning("job recovery failed; trying again in %.0f s", period, exc_info=True)

        threading.Thread(target=loop, name="edge-al-job-reaper", daemon=True).start()
        return stop.set

    def create_consumer(self, workers: int = 1, max_delay: float = 0.5) -> Any:
        """A huey consumer with thread workers; it sets signal handlers only on the main thread."""
        from huey.consumer import Consumer

        class _Consumer(Consumer):
            def _set_signal_handlers(self) -> None:
                if threading.current_thread() is threading.main_thread():
                    super()._set_signal_handlers()

        if not isinstance(workers, int) or not 1 <= workers <= 64:
            raise InvalidInput(f"The 'workers' parameter must be an int in [1, 64]. Got {workers!r} instead.")
        return _Consumer(
            self.huey, workers=workers, worker_type="thread", periodic=False, initial_delay=0.05, max_delay=max_delay, backoff=1.5
        )


def _enable_job_logging() -> None:
    for name in ("edge_al", "export"):
        lg = logging.getLogger(name)
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)


def run_worker(settings: Settings, workers: int = 1, manager: JobManager | None = None) -> None:
    """Run the job worker in the foreground until SIGINT/SIGTERM (``edge-al worker``)."""
    mgr = manager or JobManager(settings)
    _enable_job_logging()
    failed = mgr.recover()
    if failed:
        log.warning("took over %d job(s) of dead workers: %s", len(failed), failed)
    where = redact_url(mgr.huey_url) if mgr.huey_url else "jobs.sqlite3 in the workspace"
    log.warning("edge-al worker %s: %d thread(s), %s queue at %s", _worker_id(), workers, mgr.backend, where)
    stop_reaper = mgr.start_reaper()
    try:
        mgr.create_consumer(workers).run()
    finally:
        stop_reaper()


def start_worker_thread(
    settings: Settings, workers: int = 1, manager: JobManager | None = None, timeout: float = 30.0
) -> Callable[[], None]:
    """Start the job worker on background threads (``serve --with-worker``); returns ``stop()``,
    which waits up to ``timeout`` s for a running job to finish its current step."""
    from huey.consumer import ConsumerStopped

    mgr = manager or JobManager(settings)
    _enable_job_logging()
    mgr.recover()
    stop_reaper = mgr.start_reaper()
    consumer = mgr.create_consumer(workers)
    consumer.shutdown_timeout = timeout
    consumer.start()

    def supervise() -> None:  # restarts dead worker threads, like consumer.run() does
        ts = time.monotonic()
        while True:
            try:
                ts = consumer.loop(ts)
            except ConsumerStopped:
                return

    sup = threading.Thread(target=supervise, name="edge-al-worker-supervisor", daemon=True)
    sup.start()
    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        for job in mgr.list(limit=20, state="running"):
            if job["worker"] == _worker_id():
                try:
                    mgr.cancel(job["id"])
                except EdgeALError:
                    pass
        stop_reaper()
        consumer.stop(graceful=True)
        sup.join(timeout)

    return stop
