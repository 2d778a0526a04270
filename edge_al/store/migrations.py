"""The store's one schema, as ordered migrations applied when a store opens (SQLite and PostgreSQL).

``schema_migrations`` records each applied version. Opening a store applies the missing ones in
order inside one write transaction (so two processes opening the same new database do not both
apply them); a store whose version is newer than this code knows is refused. Migration 1 is the
schema every workspace had before migrations existed: written with ``IF NOT EXISTS``, it is a no-op
on such a workspace, which is then upgraded in place by the later ones.

Type tokens (``{id}``, ``{ref}``, ``{real}``, ``{blob}``, ``{without_rowid}``) are spelled by
each backend (:mod:`edge_al.store.backends`). Never edit a migration that has shipped: add one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_al.errors import Conflict

if TYPE_CHECKING:
    from . import Store

__all__ = ["LATEST", "MIGRATIONS", "Migration", "migrate", "schema_version"]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    script: str


_V1 = """
CREATE TABLE IF NOT EXISTS samples (
    id {id},
    sha256 TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    source TEXT NOT NULL DEFAULT 'ingest',
    created_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_path ON samples(path);
CREATE TABLE IF NOT EXISTS labels (
    id {id},
    name TEXT NOT NULL UNIQUE,
    created_at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS annotations (
    id {id},
    sample_id {ref} NOT NULL REFERENCES samples(id),
    label TEXT,
    action TEXT NOT NULL CHECK (action IN ('accept', 'correct', 'reject', 'undo')),
    annotator TEXT NOT NULL DEFAULT '',
    model_version TEXT,
    created_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS annotations_sample ON annotations(sample_id, id);
CREATE TABLE IF NOT EXISTS predictions (
    sample_id {ref} NOT NULL REFERENCES samples(id),
    model_version TEXT NOT NULL,
    label_index INTEGER NOT NULL,
    confidence {real} NOT NULL,
    probs {blob} NOT NULL,
    least_confidence {real} NOT NULL,
    margin {real} NOT NULL,
    entropy {real} NOT NULL,
    fre {real},
    knn {real},
    PRIMARY KEY (sample_id, model_version)
){without_rowid};
CREATE TABLE IF NOT EXISTS leases (
    sample_id {ref} PRIMARY KEY REFERENCES samples(id),
    holder TEXT NOT NULL,
    expires_at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id {id},
    key_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    created_at {real} NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS jobs (
    id {id},
    kind TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    progress {real} NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    log_tail TEXT NOT NULL DEFAULT '[]',
    params TEXT NOT NULL DEFAULT '{{}}',
    result TEXT,
    labels_at_submit INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    task_id TEXT,
    worker TEXT,
    heartbeat_at {real},
    created_at {real} NOT NULL,
    started_at {real},
    finished_at {real}
);
CREATE INDEX IF NOT EXISTS jobs_kind_state ON jobs(kind, state);
"""

# What every API process repeats with several annotators: "decisions since the model" (a range on
# created_at, on each annotation) and the per-holder lease count (on each /v1/queue).
_V2 = """
CREATE INDEX IF NOT EXISTS annotations_created ON annotations(created_at);
CREATE INDEX IF NOT EXISTS leases_holder ON leases(holder, expires_at);
"""

# A stamp per model version, renewed in the transaction of every write of its predictions: what a
# copy of them kept outside the database (edge_al.prediction_cache) is checked against.
_V3 = """
CREATE TABLE IF NOT EXISTS prediction_stamps (
    model_version TEXT PRIMARY KEY,
    stamp TEXT NOT NULL
);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "samples, labels, annotations, predictions, leases, api_keys, jobs", _V1),
    Migration(2, "indexes for annotations by time and leases by holder", _V2),
    Migration(3, "a stamp per model version's predictions", _V3),
)
LATEST = MIGRATIONS[-1].version

_TABLE = "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at {real} NOT NULL)"


def schema_version(store: Store) -> int:
    """The newest migration applied to ``store``'s database (0: none, a database from before migrations)."""
    conn = store._conn()
    if "schema_migrations" not in store.backend.tables(conn):
        return 0
    return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0])


def migrate(store: Store) -> list[int]:
    """Apply the migrations ``store`` lacks, in order, in one write transaction; the versions applied."""
    if schema_version(store) == LATEST:  # the common case reads only, without the writer lock
        return []
    applied = []
    with store.tx() as c:
        for stmt in store.backend.ddl(_TABLE):
            c.execute(stmt)
        done = {int(r[0]) for r in c.execute("SELECT version FROM schema_migrations")}
        if done and max(done) > LATEST:
            raise Conflict(
                f"The {store.backend.describe()} has schema version {max(done)}; this edge-al knows versions up to {LATEST}. "
                "Upgrade edge-al on this box to the version the other boxes run."
            )
        for m in MIGRATIONS:
            if m.version in done:
                continue
            for stmt in store.backend.ddl(m.script):
                c.execute(stmt)
            c.execute("INSERT INTO schema_migrations(version, name, applied_at) VALUES (?, ?, ?)", (m.version, m.name, time.time()))
            applied.append(m.version)
    return applied
