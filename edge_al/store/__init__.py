"""The store: samples, labels, annotations, predictions per model version, leases, jobs, keys.

On an SQLite file in the workspace (the embedded default) or on a PostgreSQL database that several
API processes and workers share (``EDGE_AL_DB=postgresql://...``); :func:`open_store` picks the
backend (:mod:`edge_al.store.backends`), and opening applies the schema's migrations
(:mod:`edge_al.store.migrations`). Every write is one transaction that excludes every other writer
of the database, in any process; on SQLite a write that returned survives a kill -9 (WAL,
``synchronous=FULL``). One connection per thread; the ``Store`` object itself is safe to share.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from edge_al.errors import InvalidInput, LeaseConflict, NotFound, NotPermitted, UnknownLabel

from .backends import Backend, Conn, Row, SqliteBackend, backend_for

if TYPE_CHECKING:
    from edge_al.config import Settings

    from .jobs import JobTable

__all__ = ["ACTIONS", "Annotation", "ApiKey", "Prediction", "Sample", "Store", "open_store"]

ACTIONS = ("accept", "correct", "reject")


@dataclass(frozen=True)
class Sample:
    id: int
    sha256: str
    path: str
    width: int
    height: int
    source: str
    created_at: float


@dataclass(frozen=True)
class Annotation:
    sample_id: int
    label: str | None
    action: str
    annotator: str
    created_at: float


@dataclass(frozen=True)
class ApiKey:
    """A stored API key: its id, the SHA-256 of its token, role, name, creation time, revoked flag."""

    id: int
    key_hash: str
    role: str
    name: str
    created_at: float
    revoked: bool


@dataclass(frozen=True)
class Prediction:
    sample_id: int
    model_version: str
    label_index: int
    confidence: float
    probs: np.ndarray
    scores: dict[str, float]


class Store:
    """The transactional store of one workspace, on the database of ``backend``; open one with :func:`open_store`."""

    def __init__(self, backend: Backend) -> None:
        from .migrations import migrate

        self.backend = backend
        self._local = threading.local()
        migrate(self)

    # -- connections -----------------------------------------------------------------------
    def _conn(self) -> Conn:
        conn: Conn | None = getattr(self._local, "conn", None)
        if conn is None or getattr(conn, "broken", False):  # a PostgreSQL connection the server dropped
            conn = self.backend.connect()
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def tx(self) -> Iterator[Conn]:
        """One write transaction: committed on success, rolled back on any exception."""
        conn = self._conn()
        if conn.in_transaction:  # nested use joins the outer transaction
            yield conn
            return
        self.backend.begin(conn)
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Rows of one read, each readable by column name and by index."""
        return list(self._conn().execute(sql, params))

    def backup_to(self, path: Path) -> None:
        """A consistent SQLite copy of this live SQLite store at ``path`` (SQLite's backup API: a file copy under WAL is not one)."""
        if not isinstance(self.backend, SqliteBackend):
            raise InvalidInput(f"backup_to copies SQLite stores only; this store is the {self.backend.describe()}: use pg_dump.")
        path.parent.mkdir(parents=True, exist_ok=True)
        dst = sqlite3.connect(path)
        try:
            cast(sqlite3.Connection, self._conn()).backup(dst)
        finally:
            dst.close()

    @cached_property
    def jobs(self) -> JobTable:
        """The background-job records (:class:`edge_al.store.jobs.JobTable`)."""
        from .jobs import JobTable

        return JobTable(self)

    # -- samples -----------------------------------------------------------------------------
    def add_sample(self, sha256: str, path: str, width: int, height: int, source: str = "ingest") -> tuple[int, bool]:
        """Register a sample; returns ``(id, created)``. A known content hash returns the existing id."""
        with self.tx() as c:
            row = c.execute("SELECT id FROM samples WHERE sha256 = ?", (sha256,)).fetchone()
            if row is not None:
                return int(row["id"]), False
            row = c.execute(
                "INSERT INTO samples(sha256, path, width, height, source, created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (sha256, path, width, height, source, time.time()),
            ).fetchone()
            return int(row["id"]), True

    def sample(self, sample_id: int) -> Sample:
        rows = self.query("SELECT * FROM samples WHERE id = ?", (sample_id,))
        if not rows:
            raise NotFound(f"Sample {sample_id} does not exist.")
        return Sample(**dict(rows[0]))

    def find_sample(self, ref: str | int) -> Sample:
        """A sample by id (int or digits) or by path (as ingested, or resolved)."""
        # isdecimal, not isdigit: "³" is a digit that int() refuses (a fuzzed annotation found it: 500)
        if isinstance(ref, int) or (isinstance(ref, str) and ref.strip().isascii() and ref.strip().isdecimal()):
            return self.sample(int(ref))
        text = str(ref).strip()
        rows = self.query("SELECT * FROM samples WHERE path = ?", (text,))
        if not rows:
            rows = self.query("SELECT * FROM samples WHERE path = ?", (str(Path(text).expanduser().resolve()),))
        if not rows:
            raise NotFound(f"No sample with id or path {text!r}: ingest it first.")
        return Sample(**dict(rows[0]))

    def samples(self, ids: Iterable[int] | None = None) -> list[Sample]:
        if ids is None:
            return [Sample(**dict(r)) for r in self.query("SELECT * FROM samples ORDER BY id")]
        out = []
        for chunk in _chunks(list(ids), 900):
            marks = ",".join("?" * len(chunk))
            out += [Sample(**dict(r)) for r in self.query(f"SELECT * FROM samples WHERE id IN ({marks})", chunk)]
        by_id = {s.id: s for s in out}
        return [by_id[i] for i in ids if i in by_id]

    def sample_ids(self) -> np.ndarray:
        """int64 [N] every sample id, ascending."""
        return np.array([r[0] for r in self._conn().execute("SELECT id FROM samples ORDER BY id")], dtype=np.int64)

    def count_samples(self) -> int:
        return int(self.query("SELECT COUNT(*) AS n FROM samples")[0]["n"])

    # -- labels ------------------------------------------------------------------------------
    def labels(self) -> list[str]:
        """Label names in creation order (the class index order of a newly trained model)."""
        return [r["name"] for r in self.query("SELECT name FROM labels ORDER BY id")]

    def add_label(self, name: str) -> bool:
        name = validate_label_name(name)
        with self.tx() as c:
            cur = c.execute("INSERT INTO labels(name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING", (name, time.time()))
            return cur.rowcount > 0

    # -- annotations -------------------------------------------------------------------------
    def add_annotation(
        self,
        sample_id: int,
        action: str,
        label: str | None,
        annotator: str = "",
        model_version: str | None = None,
        *,
        create_label: bool = False,
        respect_leases: bool = False,
    ) -> bool:
        """Record one decision. Returns False when the sample's standing decision is already this
        annotator's same decision (idempotent), True when a new history row was written.

        ``respect_leases``: a sample under another holder's live lease raises ``LeaseConflict``
        (the API sets it for every key but admin's; the CLI and the build side do not)."""
        if action not in ACTIONS:
            raise InvalidInput(f"The 'action' field must be one of {', '.join(ACTIONS)}. Got {action!r} instead.")
        if action != "reject" and not label:
            raise InvalidInput(f"Action {action!r} needs a label.")
        if action == "reject":
            label = None
        with self.tx() as c:
            if c.execute("SELECT 1 FROM samples WHERE id = ?", (sample_id,)).fetchone() is None:
                raise NotFound(f"Sample {sample_id} does not exist.")
            if respect_leases:
                self._check_lease(c, sample_id, annotator)
            if label is not None:
                self._ensure_label(c, label, create_label)
            last = self._latest_annotation(c, sample_id)
            # "unchanged" only while this very decision stands: not after an undo, nor after
            # someone else's later decision on the sample
            if last is not None and last["annotator"] == annotator and last["label"] == label and last["action"] == action:
                return False
            c.execute(
                "INSERT INTO annotations(sample_id, label, action, annotator, model_version, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (sample_id, label, action, annotator, model_version, time.time()),
            )
            c.execute("DELETE FROM leases WHERE sample_id = ?", (sample_id,))
            return True

    @staticmethod
    def _latest_annotation(c: Conn, sample_id: int) -> Row | None:
        row: Row | None = c.execute(
            "SELECT annotator, label, action FROM annotations WHERE sample_id = ? ORDER BY id DESC LIMIT 1", (sample_id,)
        ).fetchone()
        return row

    @staticmethod
    def _check_lease(c: Conn, sample_id: int, annotator: str) -> None:
        row = c.execute("SELECT holder, expires_at FROM leases WHERE sample_id = ? AND expires_at > ?", (sample_id, time.time())).fetchone()
        if row is not None and row["holder"] != annotator:
            left = max(0, int(row["expires_at"] - time.time()))
            raise LeaseConflict(
                f"Sample {sample_id} is leased to another annotator for {left} more s; {annotator!r} holds no lease on it. "
                "Take the next sample from /v1/queue, or ask an admin to record this decision."
            )

    def _ensure_label(self, c: Conn, label: str, create_label: bool) -> None:
        if c.execute("SELECT 1 FROM labels WHERE name = ?", (label,)).fetchone() is not None:
            return
        if not create_label:
            raise UnknownLabel(f"Unknown label {label!r}: known labels are {', '.join(self.labels()) or '(none)'}. Add it first.")
        c.execute("INSERT INTO labels(name, created_at) VALUES (?, ?)", (validate_label_name(label), time.time()))

    def undo_annotation(self, sample_id: int, annotator: str = "", *, any_annotator: bool = False) -> bool:
        """Withdraw the sample's standing decision (history keeps both rows); the undo row is
        recorded under ``annotator``.

        Returns False when the sample has no standing decision. A decision that is another
        annotator's raises ``NotPermitted`` unless ``any_annotator`` (admins)."""
        with self.tx() as c:
            last = self._latest_annotation(c, sample_id)
            if last is None or last["action"] == "undo":
                return False
            if last["annotator"] != annotator and not any_annotator:
                raise NotPermitted(
                    f"The standing decision on sample {sample_id} is {last['annotator']!r}'s, not {annotator!r}'s: "
                    "an annotator can undo only their own decisions. Ask them or an admin to undo it."
                )
            c.execute(
                "INSERT INTO annotations(sample_id, label, action, annotator, created_at) VALUES (?, NULL, 'undo', ?, ?)",
                (sample_id, annotator, time.time()),
            )
            return True

    def current_annotations(self) -> dict[int, Annotation]:
        """The latest standing decision per sample (any annotator); an undone sample has none."""
        rows = self.query(f"SELECT a.* FROM annotations a {_LATEST_JOIN}")
        return {
            int(r["sample_id"]): Annotation(int(r["sample_id"]), r["label"], r["action"], r["annotator"], float(r["created_at"]))
            for r in rows
            if r["action"] != "undo"
        }

    def annotation_history(self, sample_id: int) -> list[Annotation]:
        rows = self.query("SELECT * FROM annotations WHERE sample_id = ? ORDER BY id", (sample_id,))
        return [Annotation(int(r["sample_id"]), r["label"], r["action"], r["annotator"], float(r["created_at"])) for r in rows]

    def labeled(self) -> tuple[np.ndarray, list[str]]:
        """``(sample_ids int64 [M], label names [M])`` of samples whose latest decision gives a label."""
        cur = self.current_annotations()
        ids = sorted(i for i, a in cur.items() if a.label is not None)
        return np.array(ids, dtype=np.int64), [cur[i].label or "" for i in ids]

    def annotated_ids(self) -> np.ndarray:
        """int64 [K] every sample with a decision (labeled or rejected): not in the unlabeled pool."""
        rows = self._conn().execute(f"SELECT a.sample_id FROM annotations a {_LATEST_JOIN} WHERE a.action != 'undo' ORDER BY a.sample_id")
        return np.array([r[0] for r in rows], dtype=np.int64)

    def unlabeled_predicted_counts(self, version: str) -> dict[int, int]:
        """``{label_index: n}`` over samples scored by ``version`` that have no standing decision
        (never annotated, or their latest decision undone)."""
        rows = self.query(
            "SELECT label_index, COUNT(*) AS n FROM predictions WHERE model_version = ? AND sample_id NOT IN "
            f"(SELECT a.sample_id FROM annotations a {_LATEST_JOIN} WHERE a.action != 'undo') GROUP BY label_index",
            (version,),
        )
        return {int(r["label_index"]): int(r["n"]) for r in rows}

    def annotation_count(self) -> int:
        return int(self.query("SELECT COUNT(*) AS n FROM annotations")[0]["n"])

    # -- predictions -------------------------------------------------------------------------
    def put_predictions(self, version: str, rows: Sequence[tuple[int, np.ndarray, dict[str, float]]]) -> None:
        """Write ``(sample_id, probs float32 [C], scores)`` rows for one model version in one transaction."""
        with self.tx() as c:
            c.executemany(
                "INSERT INTO predictions(sample_id, model_version, label_index, confidence, probs,"
                " least_confidence, margin, entropy, fre, knn) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(sample_id, model_version) DO UPDATE SET label_index = excluded.label_index,"
                " confidence = excluded.confidence, probs = excluded.probs, least_confidence = excluded.least_confidence,"
                " margin = excluded.margin, entropy = excluded.entropy, fre = excluded.fre, knn = excluded.knn",
                [
                    (
                        int(sid),
                        version,
                        int(np.argmax(p)),
                        float(np.max(p)),
                        np.asarray(p, dtype=np.float32).tobytes(),
                        float(s["least_confidence"]),
                        float(s["margin"]),
                        float(s["entropy"]),
                        None if s.get("fre") is None else float(s["fre"]),
                        None if s.get("knn") is None else float(s["knn"]),
                    )
                    for sid, p, s in rows
                ],
            )
            self._restamp(c, version)

    @staticmethod
    def _restamp(c: Conn, version: str) -> None:
        """Give ``version``'s predictions a new stamp (inside the transaction that changes them)."""
        c.execute(
            "INSERT INTO prediction_stamps(model_version, stamp) VALUES (?, ?) ON CONFLICT(model_version) DO UPDATE SET stamp = excluded.stamp",
            (version, uuid.uuid4().hex),
        )

    def prediction_stamp(self, version: str) -> str:
        """What changes whenever ``version``'s predictions (ids or probs) are written or deleted
        through this store: a copy read after this stamp holds while the stamp does. ``""`` for a
        version never written since the stamps exist (migration 3)."""
        row = self._conn().execute("SELECT stamp FROM prediction_stamps WHERE model_version = ?", (version,)).fetchone()
        return "" if row is None else str(row[0])

    def set_novelty(self, version: str, ids: np.ndarray, fre: np.ndarray | None, knn: np.ndarray | None) -> None:
        """Write the FRE and k-NN novelty (``[N]`` float, or None for absent) of ``ids``' predictions by ``version``."""
        rows = [
            (None if fre is None else float(fre[i]), None if knn is None else float(knn[i]), int(ids[i]), version) for i in range(len(ids))
        ]
        with self.tx() as c:
            c.executemany("UPDATE predictions SET fre = ?, knn = ? WHERE sample_id = ? AND model_version = ?", rows)

    def scored_ids(self, version: str) -> np.ndarray:
        return np.array(
            [
                r[0]
                for r in self._conn().execute("SELECT sample_id FROM predictions WHERE model_version = ? ORDER BY sample_id", (version,))
            ],
            dtype=np.int64,
        )

    def predictions(self, version: str, ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(sample_ids int64 [N], probs float32 [N, C])`` for a version, ascending ids."""
        if ids is None:
            rows = self._conn().execute("SELECT sample_id, probs FROM predictions WHERE model_version = ? ORDER BY sample_id", (version,))
            pairs = [(int(a), b) for a, b in rows]
        else:
            pairs = []
            for chunk in _chunks(sorted(int(i) for i in ids), 900):
                marks = ",".join("?" * len(chunk))
                pairs += [
                    (int(a), b)
                    for a, b in self._conn().execute(
                        f"SELECT sample_id, probs FROM predictions WHERE model_version = ? AND sample_id IN ({marks})",
                        [version, *chunk],
                    )
                ]
            pairs.sort()
        if not pairs:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        sids = np.array([a for a, _ in pairs], dtype=np.int64)
        probs = np.frombuffer(b"".join(b for _, b in pairs), dtype=np.float32).reshape(len(pairs), -1).copy()
        return sids, probs

    def prediction(self, sample_id: int, version: str) -> Prediction | None:
        rows = self.query("SELECT * FROM predictions WHERE sample_id = ? AND model_version = ?", (sample_id, version))
        if not rows:
            return None
        r = rows[0]
        scores = {k: r[k] for k in ("least_confidence", "margin", "entropy", "fre", "knn") if r[k] is not None}
        return Prediction(
            int(r["sample_id"]),
            version,
            int(r["label_index"]),
            float(r["confidence"]),
            np.frombuffer(r["probs"], dtype=np.float32).copy(),
            scores,
        )

    def delete_predictions(self, version: str) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM predictions WHERE model_version = ?", (version,))
            self._restamp(c, version)

    # -- leases ------------------------------------------------------------------------------
    def leased_ids(self, now: float | None = None, exclude_holder: str | None = None) -> set[int]:
        now = time.time() if now is None else now
        rows = self.query("SELECT sample_id, holder FROM leases WHERE expires_at > ?", (now,))
        return {int(r["sample_id"]) for r in rows if exclude_holder is None or r["holder"] != exclude_holder}

    def held_ids(self, holder: str, now: float | None = None) -> set[int]:
        """The samples under ``holder``'s live leases."""
        now = time.time() if now is None else now
        rows = self.query("SELECT sample_id FROM leases WHERE holder = ? AND expires_at > ?", (holder, now))
        return {int(r["sample_id"]) for r in rows}

    def lease(self, ids: Sequence[int], holder: str, seconds: float, max_live: int | None = None) -> dict[int, float]:
        """Lease the given samples to ``holder``; returns those it got, in order, each with its
        lease's end as stored (Unix time): not under someone else's live lease, without a standing
        decision (the queue ranks outside this transaction, so a sample can be decided, in any
        process, between its ranking and its lease), and, with ``max_live``, no more than leave
        ``holder`` with ``max_live`` live leases (renewing one it holds always succeeds).

        The clock is read once the write transaction holds the store's lock: a lease lasts
        ``seconds`` from its grant, however long the transaction waited for the lock, and the
        end returned is the one every process checks against (the API tells it to the holder)."""
        got: dict[int, float] = {}
        with self.tx() as c:
            now = time.time()
            c.execute("DELETE FROM leases WHERE expires_at <= ?", (now,))
            held = {int(r[0]) for r in c.execute("SELECT sample_id FROM leases WHERE holder = ?", (holder,))}
            for sid in ids:
                row = c.execute("SELECT holder FROM leases WHERE sample_id = ?", (int(sid),)).fetchone()
                if row is not None and row["holder"] != holder:
                    continue
                decision = self._latest_annotation(c, int(sid))
                if decision is not None and decision["action"] != "undo":
                    continue
                if row is None and max_live is not None and len(held) >= max_live:
                    continue
                c.execute(
                    "INSERT INTO leases(sample_id, holder, expires_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(sample_id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
                    (int(sid), holder, now + seconds),
                )
                held.add(int(sid))
                got[int(sid)] = now + seconds
        return got

    # -- API keys ----------------------------------------------------------------------------
    def add_api_key(self, key_hash: str, role: str, name: str) -> int:
        """Store a key's hash; returns its id."""
        with self.tx() as c:
            row = c.execute(
                "INSERT INTO api_keys(key_hash, role, name, created_at) VALUES (?, ?, ?, ?) RETURNING id",
                (key_hash, role, name, time.time()),
            ).fetchone()
            return int(row["id"])

    def api_keys(self, include_revoked: bool = True) -> list[ApiKey]:
        """Stored keys by id (hashes only: tokens are never stored)."""
        sql = "SELECT id, key_hash, role, name, created_at, revoked FROM api_keys"
        if not include_revoked:
            sql += " WHERE revoked = 0"
        return [
            ApiKey(int(r["id"]), r["key_hash"], r["role"], r["name"], float(r["created_at"]), bool(r["revoked"]))
            for r in self.query(sql + " ORDER BY id")
        ]

    def revoke_api_key(self, key_id: int) -> bool:
        """Revoke a key; returns False when it was already revoked. Unknown id: NotFound."""
        with self.tx() as c:
            row = c.execute("SELECT revoked FROM api_keys WHERE id = ?", (int(key_id),)).fetchone()
            if row is None:
                raise NotFound(f"API key {key_id} does not exist: see `edge-al keys list`.")
            if row["revoked"]:
                return False
            c.execute("UPDATE api_keys SET revoked = 1 WHERE id = ?", (int(key_id),))
            return True


def open_store(where: Settings | str | Path) -> Store:
    """The one way to open a store: of a workspace's :class:`~edge_al.config.Settings` (its
    ``db_url``, else the SQLite file in its home), of a ``postgresql://`` URL, or of an SQLite path.

    Raises ``InvalidInput`` for a URL of another kind, ``MissingDependency`` without psycopg, and
    ``StoreUnavailable`` when the PostgreSQL server cannot be reached."""
    from edge_al.config import Settings

    if isinstance(where, Settings):
        where = where.db_url or where.db_path
    return Store(backend_for(where))


# the latest history row of each sample (its standing decision unless that row is an undo)
_LATEST_JOIN = "JOIN (SELECT sample_id, MAX(id) AS mid FROM annotations GROUP BY sample_id) l ON a.id = l.mid"


def validate_label_name(name: str) -> str:
    text = (name or "").strip()
    if not text or len(text) > 128 or any(ch in text for ch in "\r\n\t"):
        raise InvalidInput(f"A label must be 1 to 128 printable characters. Got {name!r} instead.")
    return text


def _chunks(seq: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(seq), size):
        yield list(seq[i : i + size])
