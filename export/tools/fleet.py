"""Several API processes and job workers on one PostgreSQL store, driven by annotator clients: the
multi-process checks of issue 12 (tests/test_store_multiprocess.py, scripts/bench_multiprocess.py).

- :class:`Fleet`: a workspace whose store is a PostgreSQL database (``build_workspace``), ``api``
  processes of ``edge-al serve`` and ``workers`` job-worker processes, all on that database, all
  real. The workers' retrain runner is a stand-in that reports progress for ``retrain_seconds``:
  training a model is not what this measures; queueing, claiming, heartbeats and finishing the
  retrain job are the real code. A trigger on ``leases`` (test instrumentation, installed before any
  process starts) logs every grant and release in commit order: the database's own account of who
  held what when.
- :class:`Annotator`: a client thread on its own key. It takes the queue from any of the API
  processes and decides each item on any of them; now and then it walks away for longer than a lease
  with items undecided (the leases run out, others get those samples, and its late decisions are
  refused with 409 or accepted when nobody took the sample), resends a decision (a client retry: must
  be ``unchanged``), undoes one, and undoes its own decisions when the pool is empty. It records
  every lease it got and every write the server acknowledged.
- :func:`check`: no sample leased to two holders at once (from the lease log, and from what the
  clients saw), every acknowledged write stored exactly once (annotation rows against the clients'
  acknowledgements), at most one retrain at a time (the jobs' windows, and a monitor that polls).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .machine import free_port

__all__ = ["Annotator", "Fleet", "RetrainMonitor", "check", "format_report", "run"]

ROOT = Path(__file__).resolve().parents[2]

_LEASE_AUDIT = """
CREATE TABLE lease_audit (id BIGSERIAL PRIMARY KEY, op TEXT NOT NULL, sample_id BIGINT NOT NULL, holder TEXT,
    expires_at DOUBLE PRECISION, at DOUBLE PRECISION NOT NULL);
CREATE FUNCTION lease_audit_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO lease_audit(op, sample_id, holder, expires_at, at)
            VALUES ('release', OLD.sample_id, OLD.holder, OLD.expires_at, extract(epoch FROM clock_timestamp()));
        RETURN OLD;
    END IF;
    INSERT INTO lease_audit(op, sample_id, holder, expires_at, at)
        VALUES ('grant', NEW.sample_id, NEW.holder, NEW.expires_at, extract(epoch FROM clock_timestamp()));
    RETURN NEW;
END $$;
CREATE TRIGGER lease_audit AFTER INSERT OR UPDATE OR DELETE ON leases FOR EACH ROW EXECUTE FUNCTION lease_audit_log();
"""


def _sql(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql)  # test instrumentation: literal SQL, no parameters
        return list(cur.fetchall()) if cur.description else []


@dataclass
class Fleet:
    """The processes of one run (``start`` / ``stop``)."""

    root: Path
    db_url: str
    api: int = 3
    workers: int = 2
    pool: int = 400
    lease_seconds: int = 6
    retrain_after: int = 40
    retrain_seconds: float = 2.0
    bases: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, people: list[str]) -> Fleet:
        from edge_al.api.auth import create_key
        from edge_al.store import open_store
        from export.tools.fixtures import build_workspace

        settings, _ = build_workspace(self.root, n=self.pool, db_url=self.db_url)
        self.home = settings.home
        store = open_store(settings)
        try:
            self.keys = {who: create_key(store, "annotator", who)[1] for who in people}
            self.labels = store.labels()
        finally:
            store.close()
        _sql(self.db_url, _LEASE_AUDIT)
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "EDGE_AL_DB": self.db_url,
            "EDGE_AL_LEASE_SECONDS": str(self.lease_seconds),
            "EDGE_AL_RETRAIN_AFTER": str(self.retrain_after),
        }
        for i in range(self.workers):
            cmd = [
                sys.executable,
                "-m",
                "export.tools.fleet",
                "worker",
                "--home",
                str(self.home),
                "--retrain-seconds",
                str(self.retrain_seconds),
            ]
            self._spawn(cmd, env, f"worker{i}")
        for i in range(self.api):
            port = free_port()
            self._spawn(
                [sys.executable, "-m", "edge_al", "--home", str(self.home), "serve", "--port", str(port), "--threads", "8"], env, f"api{i}"
            )
            self.bases.append(f"127.0.0.1:{port}")
        for i, base in enumerate(self.bases):
            self._wait_ready(base, self.procs[self.workers + i], f"api{i}")
        return self

    def _spawn(self, cmd: list[str], env: dict[str, str], name: str) -> None:
        with open(self.root / f"{name}.log", "wb") as out:
            self.procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))

    def _wait_ready(self, base: str, proc: subprocess.Popen[bytes], name: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {self.log(name)[-3000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection(base, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    return
            time.sleep(0.1)  # polling a starting server for readiness (no event to wait on across processes)
        raise RuntimeError(f"{name} did not become ready: {self.log(name)[-3000:]}")

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> list[int]:
        """SIGTERM every process, then wait; their exit codes (the API processes' last)."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(30))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        return codes


class _Client:
    """Keep-alive HTTP/1.1 to the API processes, one connection per process; JSON in and out."""

    def __init__(self, bases: list[str], token: str) -> None:
        self.bases = bases
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.conns: dict[str, http.client.HTTPConnection] = {}

    def call(self, base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):  # a keep-alive connection the server closed: reconnect once (never after a sent body was answered)
            conn = self.conns.get(base) or http.client.HTTPConnection(base, timeout=60)
            self.conns[base] = conn
            try:
                conn.request(method, path, body=data, headers=self.headers)
                resp = conn.getresponse()
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                conn.close()
                self.conns.pop(base, None)
                if attempt or data is not None:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()


@dataclass
class Grant:
    """One lease as its holder saw it: its queue call was sent and answered at ``sent`` and
    ``received``; the server said it ends at ``expires`` (the stored end); the holder sent its
    decision at ``decided_at``. Unix times of this machine's clock, which the servers share."""

    sample_id: int
    holder: str
    sent: float
    received: float
    expires: float
    decided_at: float | None = None

    def held(self) -> tuple[float, float]:
        """A window in which this holder certainly held the sample: from the answer (the grant came
        before it) to the lease's end or the decision's sending, whichever came first (only its
        own decision ends a live lease early, and the server cannot act on it before it is sent)."""
        return self.received, min(self.expires, self.decided_at if self.decided_at is not None else self.expires)

    def timeline(self) -> str:
        decided = "undecided" if self.decided_at is None else f"decision sent {self.decided_at:.3f}"
        return f"{self.holder}: queue sent {self.sent:.3f}, answered {self.received:.3f}, lease ends {self.expires:.3f}, {decided}"


class Annotator(threading.Thread):
    """One person on their own key until ``stop`` is set (or ``rounds`` queue calls are done)."""

    def __init__(self, name: str, fleet: Fleet, stop: threading.Event, *, rounds: int | None = None, seed: int = 0, n: int = 3,
                 walk_away: float = 0.02, resend: float = 0.1, undo: float = 0.1) -> None:  # fmt: skip
        super().__init__(name=f"annotator-{name}", daemon=True)
        self.who, self.fleet, self.stop_event, self.rounds, self.n = name, fleet, stop, rounds, n
        self.p_walk_away, self.p_resend, self.p_undo = walk_away, resend, undo
        self.rng = random.Random(seed)
        self.client = _Client(fleet.bases, fleet.keys[name])
        self.grants: list[Grant] = []  # every lease of every queue answer (a renewal is a grant of its own)
        self.acked: list[tuple[int, str, str, str | None]] = []  # (sample, annotator, action, label) the server said it wrote
        self.standing: list[int] = []  # my decisions that stand (for recycling an empty pool)
        self.counts: Counter[str] = Counter()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            done = 0
            while not self.stop_event.is_set() and (self.rounds is None or done < self.rounds):
                self._round()
                done += 1
        except BaseException as exc:  # reported by check(); a client bug must not pass silently
            self.error = exc
        finally:
            self.client.close()

    def _base(self) -> str:
        return self.rng.choice(self.fleet.bases)

    def _timed(self, kind: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        t0 = time.monotonic()
        status, doc = self.client.call(self._base(), method, path, body)
        self.latencies[kind].append(time.monotonic() - t0)
        self.counts[f"{kind} {status}"] += 1
        return status, doc

    def _round(self) -> None:
        sent = time.time()
        status, doc = self._timed("queue", "GET", f"/v1/queue?n={self.n}")
        received = time.time()
        if status != 200:
            raise AssertionError(f"GET /v1/queue: {status} {doc}")
        if not doc["items"]:
            self._recycle()
            return
        grants = [Grant(int(item["sample_id"]), self.who, sent, received, float(item["lease_expires_at"])) for item in doc["items"]]
        self.grants += grants
        if self.rng.random() < self.p_walk_away:
            # away from the screen for longer than a lease: simulated absence, not synchronisation
            self.counts["walked away"] += 1
            self.stop_event.wait(self.fleet.lease_seconds + 0.5)
        for grant, item in zip(grants, doc["items"], strict=True):
            self._decide(grant, item)

    def _decide(self, grant: Grant, item: dict[str, Any]) -> None:
        action = self.rng.choice(("correct", "correct", "accept", "reject"))
        label = None if action == "reject" else (item["predicted"] if action == "accept" else self.rng.choice(self.fleet.labels))
        body = [{"sample_id": grant.sample_id, "action": action, **({"label": label} if label else {})}]
        grant.decided_at = time.time()
        status, doc = self._timed("annotate", "POST", "/v1/annotations", body)
        if status == 409:  # the lease ran out and someone else holds the sample now: refused, nothing written
            self.counts["refused (lease taken over)"] += 1
            return
        if status != 200 or doc["written"] + doc["unchanged"] != 1:
            raise AssertionError(f"POST /v1/annotations: {status} {doc}")
        if doc["written"]:
            self.acked.append((grant.sample_id, self.who, action, label))
            self.standing.append(grant.sample_id)
        if self.rng.random() < self.p_resend:  # a client retry: unchanged while the decision stands
            status, again = self._timed("resend", "POST", "/v1/annotations", body)
            if status == 200 and again["written"]:  # someone's later decision came in between (checked in the history)
                self.acked.append((grant.sample_id, self.who, action, label))
                self.counts["resend written (superseded meanwhile)"] += 1
        if self.rng.random() < self.p_undo:
            self._undo(grant.sample_id)

    def _undo(self, sample_id: int) -> None:
        status, doc = self._timed("undo", "POST", "/v1/annotations/undo", {"sample_id": sample_id})
        if status not in (200, 403):  # 403: another annotator's later decision stands now (a late one, after its lease ran out)
            raise AssertionError(f"POST /v1/annotations/undo: {status} {doc}")
        if status == 200 and doc["undone"]:
            self.acked.append((sample_id, self.who, "undo", None))
        with contextlib.suppress(ValueError):
            self.standing.remove(sample_id)

    def _recycle(self) -> None:
        """The pool is empty for me: withdraw a few of my own decisions so there is work again."""
        self.counts["empty queue"] += 1
        for sid in self.standing[:3]:
            self._undo(sid)
        if not self.standing:
            self.stop_event.wait(0.05)  # nothing of mine to withdraw: let the others' leases run out


class RetrainMonitor(threading.Thread):
    """Polls the jobs table: the most retrain jobs queued or running at one moment."""

    def __init__(self, db_url: str, stop: threading.Event, every_s: float = 0.1) -> None:
        super().__init__(name="retrain-monitor", daemon=True)
        self.db_url, self.stop_event, self.every_s = db_url, stop, every_s
        self.most_live = 0
        self.most_running = 0
        self.polls = 0

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.db_url, autocommit=True) as conn:
            while not self.stop_event.wait(self.every_s):
                row = conn.execute(
                    "SELECT COUNT(*) FILTER (WHERE state IN ('queued', 'running')), COUNT(*) FILTER (WHERE state = 'running')"
                    " FROM jobs WHERE kind = 'retrain'"
                ).fetchone()
                assert row is not None
                self.most_live = max(self.most_live, int(row[0]))
                self.most_running = max(self.most_running, int(row[1]))
                self.polls += 1


def run(fleet: Fleet, people: list[str], *, seconds: float | None = None, rounds: int | None = None, seed: int = 0,
        **behaviour: Any) -> dict[str, Any]:  # fmt: skip
    """Drive ``fleet`` with one annotator per person for ``seconds`` (or ``rounds`` queue calls each); the checked figures."""
    stop = threading.Event()
    monitor = RetrainMonitor(fleet.db_url, stop)
    monitor.start()
    annotators = [Annotator(p, fleet, stop, rounds=rounds, seed=seed + i, **behaviour) for i, p in enumerate(people)]
    t0 = time.monotonic()
    for a in annotators:
        a.start()
    if seconds is not None:
        stop.wait(seconds)  # the run's length
        stop.set()
    for a in annotators:
        a.join()
    elapsed = time.monotonic() - t0
    stop.set()
    monitor.join()
    return check(fleet, annotators, monitor, elapsed)


# -- the checks ------------------------------------------------------------------------------------
def _lease_overlaps(db_url: str) -> tuple[int, int, list[str]]:
    """From the lease log: (grants, hand-overs to another holder, overlaps: a grant to another holder
    while the sample's previous lease was live and not released)."""
    rows = _sql(db_url, "SELECT op, sample_id, holder, expires_at, at FROM lease_audit ORDER BY id")
    live: dict[int, tuple[str, float]] = {}
    last_holder: dict[int, str] = {}
    grants = handovers = 0
    bad = []
    for op, sid, holder, expires, at in rows:
        if op == "release":
            live.pop(sid, None)
            continue
        grants += 1
        cur = live.get(sid)
        if cur is not None and cur[0] != holder and cur[1] > at:
            bad.append(f"sample {sid}: granted to {holder} at {at:.3f} while {cur[0]} held it until {cur[1]:.3f}")
        if last_holder.get(sid, holder) != holder:
            handovers += 1
        live[sid] = (holder, expires)
        last_holder[sid] = holder
    return grants, handovers, bad


def _client_overlaps(annotators: list[Annotator]) -> list[tuple[int, str]]:
    """What the clients saw: B's queue call (sent to received, so B's grant too) lay wholly inside
    a window where A certainly held the sample (:meth:`Grant.held`). Exact, not a heuristic: it
    flags nothing that the lease log would not call an overlap, as long as the end the server
    tells the holder is the end it stores (it once told a later one, see ``Store.lease``)."""
    by_sample: dict[int, list[Grant]] = defaultdict(list)
    for annotator in annotators:
        for g in annotator.grants:
            by_sample[g.sample_id].append(g)
    bad = []
    for sid, gs in by_sample.items():
        for first in gs:
            start, end = first.held()
            for other in gs:
                if other.holder != first.holder and start < other.sent and other.received < end:
                    bad.append(
                        (sid, f"sample {sid}: {other.holder} got it while {first.holder} held it ({first.timeline()}; {other.timeline()})")
                    )
    return bad


def _lease_log(db_url: str, sample_id: int) -> str:
    """The lease log of one sample, for a report that flags it."""
    rows = _sql(db_url, f"SELECT op, holder, expires_at, at FROM lease_audit WHERE sample_id = {int(sample_id)} ORDER BY id")
    return "; ".join(f"{op} {holder} at {at:.3f} (ends {expires:.3f})" for op, holder, expires, at in rows)


def _stored_once(db_url: str, annotators: list[Annotator]) -> tuple[int, int, Counter[Any], Counter[Any], list[str]]:
    """(acknowledged writes, rows stored, acknowledged but missing, stored more often than acknowledged,
    repeats: a sample's history holding the same decision twice in a row, which idempotence forbids)."""
    acked: Counter[Any] = Counter(w for a in annotators for w in a.acked)
    rows = _sql(db_url, "SELECT sample_id, annotator, action, label FROM annotations ORDER BY sample_id, id")
    stored: Counter[Any] = Counter((int(s), w, act, lab) for s, w, act, lab in rows)
    repeats = [f"sample {a[0]}: {a[1:]} written twice in a row" for a, b in itertools.pairwise(rows) if a == b and a[2] != "undo"]
    return sum(acked.values()), len(rows), acked - stored, stored - acked, repeats


def _retrain_windows(db_url: str) -> tuple[Counter[str], list[str]]:
    """The retrain jobs by state, and any two whose live windows (queued to finished) overlap."""
    rows = _sql(db_url, "SELECT id, state, created_at, started_at, finished_at FROM jobs WHERE kind = 'retrain' ORDER BY id")
    states: Counter[str] = Counter(r[1] for r in rows)
    bad = []
    for prev, cur in itertools.pairwise(rows):
        if prev[4] is None or cur[2] < prev[4]:
            bad.append(f"retrain {cur[0]} was queued at {cur[2]:.3f} while retrain {prev[0]} ({prev[1]}) was live until {prev[4]}")
    return states, bad


def check(fleet: Fleet, annotators: list[Annotator], monitor: RetrainMonitor, seconds: float) -> dict[str, Any]:
    """Every figure of the run; ``ok`` is True when the three properties held."""
    grants, handovers, db_overlaps = _lease_overlaps(fleet.db_url)
    client_overlaps = [f"{msg}; lease log: {_lease_log(fleet.db_url, sid)}" for sid, msg in _client_overlaps(annotators)[:10]]
    n_acked, n_rows, missing, extra, repeats = _stored_once(fleet.db_url, annotators)
    states, retrain_overlaps = _retrain_windows(fleet.db_url)
    counts: Counter[str] = sum((a.counts for a in annotators), Counter())
    errors = [f"{a.who}: {type(a.error).__name__}: {a.error}" for a in annotators if a.error is not None]
    lat = {k: sorted(v) for k, v in _merge_latencies(annotators).items()}
    ok = not (db_overlaps or client_overlaps or missing or extra or repeats or retrain_overlaps or errors)
    ok = ok and monitor.most_live <= 1 and monitor.most_running <= 1
    return {
        "ok": ok,
        "seconds": seconds,
        "api_processes": fleet.api,
        "workers": fleet.workers,
        "annotators": len(annotators),
        "pool": fleet.pool,
        "requests": sum(v for k, v in counts.items() if k.split(" ")[0] in {"queue", "annotate", "resend", "undo"}),
        "counts": dict(sorted(counts.items())),
        "latency_ms": {
            k: {"p50": 1000 * v[len(v) // 2], "p99": 1000 * v[min(len(v) - 1, int(len(v) * 0.99))]} for k, v in lat.items() if v
        },
        "leases": {
            "grants": grants,
            "handed_to_another_holder": handovers,
            "overlaps_db": db_overlaps[:10],
            "overlaps_seen_by_clients": client_overlaps[:10],
        },
        "annotations": {
            "acknowledged_writes": n_acked,
            "rows_stored": n_rows,
            "acknowledged_but_missing": sum(missing.values()),
            "stored_more_than_acknowledged": sum(extra.values()),
            "same_decision_twice_in_a_row": repeats[:10],
        },
        "retrains": {
            "by_state": dict(states),
            "overlapping_windows": retrain_overlaps[:10],
            "most_live_seen": monitor.most_live,
            "most_running_seen": monitor.most_running,
            "monitor_polls": monitor.polls,
        },
        "client_errors": errors,
    }


def _merge_latencies(annotators: list[Annotator]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for a in annotators:
        for k, v in a.latencies.items():
            out[k] += v
    return out


def format_report(r: dict[str, Any]) -> str:
    """The figures as the benchmark prints them."""
    lines = [
        f"{r['api_processes']} API processes + {r['workers']} workers on one PostgreSQL; {r['annotators']} annotators for "
        f"{r['seconds']:.0f} s; pool {r['pool']} images",
        f"requests: {r['requests']} ({r['requests'] / max(r['seconds'], 1e-9):.1f}/s)  "
        + ", ".join(f"{k}: {v}" for k, v in r["counts"].items()),
        "latency ms: " + ", ".join(f"{k} p50 {v['p50']:.1f} p99 {v['p99']:.1f}" for k, v in r["latency_ms"].items()),
        f"leases: {r['leases']['grants']} grants, {r['leases']['handed_to_another_holder']} handed to another holder after a "
        f"release; overlaps in the lease log: {len(r['leases']['overlaps_db'])}, seen by clients: "
        f"{len(r['leases']['overlaps_seen_by_clients'])}",
        f"annotations: {r['annotations']['acknowledged_writes']} acknowledged writes, {r['annotations']['rows_stored']} rows stored; "
        f"acknowledged but missing: {r['annotations']['acknowledged_but_missing']}, stored more than acknowledged: "
        f"{r['annotations']['stored_more_than_acknowledged']}, the same decision twice in a row: "
        f"{len(r['annotations']['same_decision_twice_in_a_row'])}",
        f"retrains: {r['retrains']['by_state']}; overlapping windows: {len(r['retrains']['overlapping_windows'])}; most live at once "
        f"(polled {r['retrains']['monitor_polls']} times): {r['retrains']['most_live_seen']}, most running: {r['retrains']['most_running_seen']}",
        f"client errors: {len(r['client_errors'])}",
        "verdict: "
        + ("PASS - no lease given twice, every acknowledged annotation stored once, at most one retrain at a time" if r["ok"] else "FAIL"),
    ]
    for key in ("overlaps_db", "overlaps_seen_by_clients"):
        lines += [f"  {x}" for x in r["leases"][key]]
    lines += [f"  {x}" for x in r["annotations"]["same_decision_twice_in_a_row"]]
    lines += [f"  {x}" for x in r["retrains"]["overlapping_windows"] + r["client_errors"]]
    return "\n".join(lines)


# -- the worker process ----------------------------------------------------------------------------
def _stand_in_retrain(seconds: float) -> Any:
    def run(settings: Any, store: Any, registry: Any, params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        steps = 20
        bar = ctx.progress()(total=steps, desc="stand-in retrain")
        labeled = len(store.labeled()[0])
        for _ in range(steps):
            time.sleep(seconds / steps)  # the work a real retrain does here (train, export, gates) is not what is measured
            bar.update(1)
        return {"summary": f"stand-in retrain over {labeled} labels", "labels": labeled}

    return run


def _worker_main(argv: list[str]) -> int:
    from edge_al.config import load_settings
    from edge_al.jobs import JobManager, run_worker

    p = argparse.ArgumentParser(prog="python -m export.tools.fleet worker")
    p.add_argument("--home", required=True)
    p.add_argument("--retrain-seconds", type=float, default=2.0)
    a = p.parse_args(argv)
    settings = load_settings(a.home)  # the store: EDGE_AL_DB
    run_worker(settings, manager=JobManager(settings, runners={"retrain": _stand_in_retrain(a.retrain_seconds)}))  # until SIGTERM
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        raise SystemExit("usage: python -m export.tools.fleet worker --home HOME [--retrain-seconds S]")
    raise SystemExit(_worker_main(sys.argv[2:]))
