"""The SQLite store: samples, labels, annotations, predictions per model version, leases, jobs, keys.

Every write is one transaction (``BEGIN IMMEDIATE``); the database runs in WAL mode with
``synchronous=FULL`` so that a write that returned survives a kill -9 of the process. One
connection per thread; the ``Store`` object itself is safe to share.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_al.errors import InvalidInput, NotFound, UnknownLabel

if TYPE_CHECKING:
    from .jobs import JobTable

__all__ = ["ACTIONS", "Annotation", "Prediction", "Sample", "Store"]

ACTIONS = ("accept", "correct", "reject")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    source TEXT NOT NULL DEFAULT 'ingest',
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_path ON samples(path);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS annotations (
    id INTEGER PRIMARY KEY,
    sample_id INTEGER NOT NULL REFERENCES samples(id),
    label TEXT,
    action TEXT NOT NULL CHECK (action IN ('accept', 'correct', 'reject', 'undo')),
    annotator TEXT NOT NULL DEFAULT '',
    model_version TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS annotations_sample ON annotations(sample_id, id);
CREATE TABLE IF NOT EXISTS predictions (
    sample_id INTEGER NOT NULL REFERENCES samples(id),
    model_version TEXT NOT NULL,
    label_index INTEGER NOT NULL,
    confidence REAL NOT NULL,
    probs BLOB NOT NULL,
    least_confidence REAL NOT NULL,
    margin REAL NOT NULL,
    entropy REAL NOT NULL,
    fre REAL,
    knn REAL,
    PRIMARY KEY (sample_id, model_version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    sample_id INTEGER PRIMARY KEY REFERENCES samples(id),
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
"""


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
class Prediction:
    sample_id: int
    model_version: str
    label_index: int
    confidence: float
    probs: np.ndarray
    scores: dict[str, float]


class Store:
    """Transactional SQLite store of one workspace."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conn().executescript(_SCHEMA)

    # -- connections -----------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on success, rolled back on any exception."""
        conn = self._conn()
        if conn.in_transaction:  # nested use joins the outer transaction
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return list(self._conn().execute(sql, params))

    def backup_to(self, path: Path) -> None:
        """A consistent copy of this live store at ``path`` (SQLite's backup API: a file copy under WAL is not one)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        dst = sqlite3.connect(path)
        try:
            self._conn().backup(dst)
        finally:
            dst.close()

    def create_tables(self, script: str) -> None:
        """Run a ``CREATE ... IF NOT EXISTS`` script (a part's own tables, such as ``jobs``)."""
        with self.tx() as c:
            for stmt in script.split(";"):
                if stmt.strip():
                    c.execute(stmt)

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
            cur = c.execute(
                "INSERT INTO samples(sha256, path, width, height, source, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (sha256, path, width, height, source, time.time()),
            )
            return int(cur.lastrowid or 0), True

    def sample(self, sample_id: int) -> Sample:
        rows = self.query("SELECT * FROM samples WHERE id = ?", (sample_id,))
        if not rows:
            raise NotFound(f"Sample {sample_id} does not exist.")
        return Sample(**dict(rows[0]))

    def find_sample(self, ref: str | int) -> Sample:
        """A sample by id (int or digits) or by path (as ingested, or resolved)."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.strip().isdigit()):
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
            cur = c.execute("INSERT OR IGNORE INTO labels(name, created_at) VALUES (?, ?)", (name, time.time()))
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
    ) -> bool:
        """Record one decision. Returns False when it repeats the annotator's latest decision
        on that sample (idempotent), True when a new history row was written."""
        if action not in ACTIONS:
            raise InvalidInput(f"The 'action' field must be one of {', '.join(ACTIONS)}. Got {action!r} instead.")
        if action != "reject" and not label:
            raise InvalidInput(f"Action {action!r} needs a label.")
        if action == "reject":
            label = None
        with self.tx() as c:
            if c.execute("SELECT 1 FROM samples WHERE id = ?", (sample_id,)).fetchone() is None:
                raise NotFound(f"Sample {sample_id} does not exist.")
            if label is not None:
                known = c.execute("SELECT 1 FROM labels WHERE name = ?", (label,)).fetchone()
                if known is None:
                    if not create_label:
                        raise UnknownLabel(
                            f"Unknown label {label!r}: known labels are {', '.join(self.labels()) or '(none)'}. Add it first."
                        )
                    c.execute("INSERT INTO labels(name, created_at) VALUES (?, ?)", (validate_label_name(label), time.time()))
            last = c.execute(
                "SELECT label, action FROM annotations WHERE sample_id = ? AND annotator = ? ORDER BY id DESC LIMIT 1",
                (sample_id, annotator),
            ).fetchone()
            if last is not None and last["label"] == label and last["action"] == action:
                return False
            c.execute(
                "INSERT INTO annotations(sample_id, label, action, annotator, model_version, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (sample_id, label, action, annotator, model_version, time.time()),
            )
            c.execute("DELETE FROM leases WHERE sample_id = ?", (sample_id,))
            return True

    def undo_annotation(self, sample_id: int, annotator: str = "") -> bool:
        """Withdraw the annotator's latest decision on a sample (history keeps both rows).

        Returns False when the annotator has no standing decision there."""
        with self.tx() as c:
            last = c.execute(
                "SELECT action FROM annotations WHERE sample_id = ? AND annotator = ? ORDER BY id DESC LIMIT 1", (sample_id, annotator)
            ).fetchone()
            if last is None or last["action"] == "undo":
                return False
            c.execute(
                "INSERT INTO annotations(sample_id, label, action, annotator, created_at) VALUES (?, NULL, 'undo', ?, ?)",
                (sample_id, annotator, time.time()),
            )
            return True

    def current_annotations(self) -> dict[int, Annotation]:
        """The latest standing decision per sample (any annotator); an undone sample has none."""
        rows = self.query(
            "SELECT a.* FROM annotations a JOIN (SELECT sample_id, MAX(id) AS mid FROM annotations GROUP BY sample_id) l ON a.id = l.mid"
        )
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
        return np.array(sorted(self.current_annotations()), dtype=np.int64)

    def annotation_count(self) -> int:
        return int(self.query("SELECT COUNT(*) AS n FROM annotations")[0]["n"])

    # -- predictions -------------------------------------------------------------------------
    def put_predictions(self, version: str, rows: Sequence[tuple[int, np.ndarray, dict[str, float]]]) -> None:
        """Write ``(sample_id, probs float32 [C], scores)`` rows for one model version in one transaction."""
        with self.tx() as c:
            c.executemany(
                "INSERT OR REPLACE INTO predictions(sample_id, model_version, label_index, confidence, probs,"
                " least_confidence, margin, entropy, fre, knn) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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

    # -- leases ------------------------------------------------------------------------------
    def leased_ids(self, now: float | None = None, exclude_holder: str | None = None) -> set[int]:
        now = time.time() if now is None else now
        rows = self.query("SELECT sample_id, holder FROM leases WHERE expires_at > ?", (now,))
        return {int(r["sample_id"]) for r in rows if exclude_holder is None or r["holder"] != exclude_holder}

    def lease(self, ids: Sequence[int], holder: str, seconds: float) -> list[int]:
        """Lease the given samples to ``holder``; returns those it got (not held by someone else)."""
        now = time.time()
        got = []
        with self.tx() as c:
            c.execute("DELETE FROM leases WHERE expires_at <= ?", (now,))
            for sid in ids:
                row = c.execute("SELECT holder FROM leases WHERE sample_id = ?", (int(sid),)).fetchone()
                if row is not None and row["holder"] != holder:
                    continue
                c.execute(
                    "INSERT INTO leases(sample_id, holder, expires_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(sample_id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
                    (int(sid), holder, now + seconds),
                )
                got.append(int(sid))
        return got


def validate_label_name(name: str) -> str:
    text = (name or "").strip()
    if not text or len(text) > 128 or any(ch in text for ch in "\r\n\t"):
        raise InvalidInput(f"A label must be 1 to 128 printable characters. Got {name!r} instead.")
    return text


def _chunks(seq: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(seq), size):
        yield list(seq[i : i + size])
