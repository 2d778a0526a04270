"""The ``jobs`` table: every SQL statement of the background-job records (``edge_al.jobs``).

Reached as ``Store.jobs``; rows read by column name (``row["state"]``); the table itself is part of
the store's schema (:mod:`edge_al.store.migrations`). The state machine is
``queued -> running -> succeeded | failed | cancelled`` and ``queued -> cancelled``; every
transition is one guarded UPDATE, so two workers never both claim a job.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from edge_al.errors import Conflict

if TYPE_CHECKING:
    from . import Store
    from .backends import Conn, Row

__all__ = ["DECISIONS_SQL", "JobTable"]

# decisions an annotator wrote after a point in time (what "annotations since the model" counts)
DECISIONS_SQL = "SELECT COUNT(*) AS n FROM annotations WHERE action IN ('accept', 'correct', 'reject') AND created_at > ?"
_LIVE_RETRAIN = "SELECT id, state FROM jobs WHERE kind = 'retrain' AND state IN ('queued', 'running') ORDER BY id LIMIT 1"


class JobTable:
    """Named statements over the ``jobs`` table of one store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def get(self, job_id: int) -> Row | None:
        rows = self._store.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def newest(self, limit: int, state: str | None = None, kind: str | None = None) -> list[Row]:
        """Up to ``limit`` jobs, newest first, optionally of one state and one kind."""
        where, args = [], []
        for column, value in (("state", state), ("kind", kind)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
        return self._store.query(sql, (*args, limit))

    def live_retrain(self) -> Row | None:
        """The queued or running retrain job, if any."""
        rows = self._store.query(_LIVE_RETRAIN.replace("id, state", "*"))
        return rows[0] if rows else None

    def decisions_since(self, since: float) -> int:
        """Annotation rows (accept, correct, reject) written after ``since`` (epoch seconds)."""
        return int(self._store.query(DECISIONS_SQL, (since,))[0]["n"])

    def _insert(self, c: Conn, kind: str, params: dict[str, Any], labels: int, task_id: str, message: str) -> int:
        row = c.execute(
            "INSERT INTO jobs(kind, state, params, labels_at_submit, task_id, message, created_at)"
            " VALUES (?, 'queued', ?, ?, ?, ?, ?) RETURNING id",
            (kind, json.dumps(params, sort_keys=True), labels, task_id, message, time.time()),
        ).fetchone()
        return int(row["id"])

    def insert(self, kind: str, params: dict[str, Any], labels: int, task_id: str) -> int:
        """A queued job; ``Conflict`` for a second live retrain (checked in the same transaction)."""
        with self._store.tx() as c:
            if kind == "retrain" and (row := c.execute(_LIVE_RETRAIN).fetchone()) is not None:
                raise Conflict(f"Retrain job {row['id']} is already {row['state']}: at most one retrain runs at a time.")
            return self._insert(c, kind, params, labels, task_id, "queued")

    def insert_retrain_if_due(self, model_at: float, threshold: int, params: dict[str, Any], labels: int, task_id: str) -> int | None:
        """Queue a retrain when no retrain is live and at least ``threshold`` decisions were written after
        the later of ``model_at`` and the last retrain's submission (one transaction); its id, or None."""
        with self._store.tx() as c:
            if c.execute(_LIVE_RETRAIN).fetchone():
                return None
            last = c.execute("SELECT MAX(created_at) AS t FROM jobs WHERE kind = 'retrain'").fetchone()
            n = int(c.execute(DECISIONS_SQL, (max(model_at, float(last["t"] or 0.0)),)).fetchone()["n"])
            if n < threshold:
                return None
            return self._insert(c, "retrain", params, labels, task_id, f"queued: {n} new annotations (threshold {threshold})")

    def cancel(self, job_id: int) -> tuple[str, str | None]:
        """Cancel a queued job, flag a running one; returns ``(state before, task id to revoke or None)``."""
        with self._store.tx() as c:
            row = c.execute("SELECT state, task_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
            state = row["state"]
            if state == "queued":
                c.execute(
                    "UPDATE jobs SET state = 'cancelled', message = 'cancelled before it started', finished_at = ? WHERE id = ?",
                    (time.time(), job_id),
                )
                return state, row["task_id"]
            if state == "running":
                c.execute(
                    "UPDATE jobs SET cancel_requested = 1, message = 'cancel requested; stopping at the next step' WHERE id = ?", (job_id,)
                )
            return state, None

    def report(self, job_id: int, progress: float, lines: list[str]) -> bool:
        """Progress, log tail and heartbeat of a running job; True when it must stop: a cancel was
        requested, or it is not running any more (``recover`` judged its worker dead and took it over)."""
        with self._store.tx() as c:
            c.execute(
                "UPDATE jobs SET progress = ?, log_tail = ?, heartbeat_at = ? WHERE id = ? AND state = 'running'",
                (progress, json.dumps(lines), time.time(), job_id),
            )
            row = c.execute("SELECT cancel_requested, state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row is None or row["cancel_requested"] or row["state"] != "running")

    def finish(
        self, job_id: int, state: str, message: str, result: dict[str, Any] | None, lines: list[str], progress: float | None
    ) -> None:
        """End a queued or running job (a finished one is left as it is)."""
        with self._store.tx() as c:
            c.execute(
                "UPDATE jobs SET state = ?, message = ?, result = ?, log_tail = ?, finished_at = ?, progress = COALESCE(?, progress)"
                " WHERE id = ? AND state IN ('queued', 'running')",
                (
                    state,
                    message[:4000],
                    json.dumps(result, default=str) if result is not None else None,
                    json.dumps(lines),
                    time.time(),
                    progress,
                    job_id,
                ),
            )

    def claim(self, job_id: int, worker: str) -> bool:
        """``queued -> running`` for ``worker``; False when the job was not queued any more."""
        now = time.time()
        with self._store.tx() as c:
            cur = c.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, heartbeat_at = ?, worker = ?, message = 'running' WHERE id = ? AND state = 'queued'",
                (now, now, worker, job_id),
            )
            return cur.rowcount == 1

    def running(self) -> list[Row]:
        return self._store.query("SELECT id, params, worker, heartbeat_at FROM jobs WHERE state = 'running'")

    def fail_running(self, job_id: int, message: str) -> bool:
        """``running -> failed``; False when it was not running any more."""
        with self._store.tx() as c:
            return self._fail_running(c, job_id, message)

    @staticmethod
    def _fail_running(c: Conn, job_id: int, message: str) -> bool:
        cur = c.execute(
            "UPDATE jobs SET state = 'failed', message = ?, finished_at = ? WHERE id = ? AND state = 'running'",
            (message, time.time(), job_id),
        )
        return cur.rowcount == 1

    def retry_running(self, job_id: int, message: str, params: dict[str, Any], task_id: str) -> int | None:
        """``running -> failed`` with ``message`` and, in the same transaction, a queued copy of the job
        (same kind and labels, ``params``); the copy's id, or None when the job was not running any
        more (another worker took it over first). A retrain's copy keeps the one-live-retrain rule."""
        with self._store.tx() as c:
            row = c.execute("SELECT kind, labels_at_submit FROM jobs WHERE id = ? AND state = 'running'", (job_id,)).fetchone()
            if row is None:
                return None
            new_id = self._insert(c, row["kind"], params, int(row["labels_at_submit"]), task_id, f"queued: retry of job {job_id}")
            self._fail_running(c, job_id, f"{message}; retried as job {new_id}")
            return new_id

    def queued_before(self, t: float) -> list[Row]:
        return self._store.query("SELECT id, task_id FROM jobs WHERE state = 'queued' AND created_at < ?", (t,))

    def set_task(self, job_id: int, task_id: str) -> None:
        with self._store.tx() as c:
            c.execute("UPDATE jobs SET task_id = ? WHERE id = ? AND state = 'queued'", (task_id, job_id))
