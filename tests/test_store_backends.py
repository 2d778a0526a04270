"""The store's backends and schema: migrations (an existing SQLite home upgrades in place, a newer
schema is refused, concurrent opens apply each migration once), open_store's URL handling and its
errors, and psycopg staying out of a line box that uses SQLite."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_al.config import Settings, load_settings, redact_url
from edge_al.errors import Conflict, InvalidInput, StoreUnavailable
from edge_al.store import Store, open_store
from edge_al.store.migrations import LATEST, schema_version

pytestmark = pytest.mark.stores
ROOT = Path(__file__).resolve().parents[1]

# The schema of every SQLite home written before migrations existed (edge_al/store/__init__.py and
# edge_al/store/jobs.py at ed95e4d), verbatim.
PRE_MIGRATION_SCHEMA = """
CREATE TABLE samples (id INTEGER PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, path TEXT NOT NULL, width INTEGER NOT NULL,
    height INTEGER NOT NULL, source TEXT NOT NULL DEFAULT 'ingest', created_at REAL NOT NULL);
CREATE INDEX samples_path ON samples(path);
CREATE TABLE labels (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at REAL NOT NULL);
CREATE TABLE annotations (id INTEGER PRIMARY KEY, sample_id INTEGER NOT NULL REFERENCES samples(id), label TEXT,
    action TEXT NOT NULL CHECK (action IN ('accept', 'correct', 'reject', 'undo')), annotator TEXT NOT NULL DEFAULT '',
    model_version TEXT, created_at REAL NOT NULL);
CREATE INDEX annotations_sample ON annotations(sample_id, id);
CREATE TABLE predictions (sample_id INTEGER NOT NULL REFERENCES samples(id), model_version TEXT NOT NULL,
    label_index INTEGER NOT NULL, confidence REAL NOT NULL, probs BLOB NOT NULL, least_confidence REAL NOT NULL,
    margin REAL NOT NULL, entropy REAL NOT NULL, fre REAL, knn REAL, PRIMARY KEY (sample_id, model_version)) WITHOUT ROWID;
CREATE TABLE leases (sample_id INTEGER PRIMARY KEY REFERENCES samples(id), holder TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE api_keys (id INTEGER PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, role TEXT NOT NULL, name TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE jobs (id INTEGER PRIMARY KEY, kind TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    progress REAL NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '', log_tail TEXT NOT NULL DEFAULT '[]',
    params TEXT NOT NULL DEFAULT '{}', result TEXT, labels_at_submit INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0, task_id TEXT, worker TEXT, heartbeat_at REAL, created_at REAL NOT NULL,
    started_at REAL, finished_at REAL);
CREATE INDEX jobs_kind_state ON jobs(kind, state);
INSERT INTO samples VALUES (1, 'h1', '/pool/a.png', 8, 8, 'ingest', 100.0), (2, 'h2', '/pool/b.png', 8, 8, 'ingest', 101.0);
INSERT INTO labels VALUES (1, 'ok', 100.0);
INSERT INTO annotations VALUES (1, 1, 'ok', 'correct', 'alice', 'v0001', 102.0);
INSERT INTO leases VALUES (2, 'bob', 9e12);
INSERT INTO jobs(kind, state, created_at) VALUES ('retrain', 'queued', 103.0);
"""


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as c:
        return {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'")}


def test_a_sqlite_home_from_before_migrations_upgrades_in_place(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    settings.home.mkdir()
    with sqlite3.connect(settings.db_path) as c:
        c.executescript(PRE_MIGRATION_SCHEMA)
    assert "annotations_created" not in _indexes(settings.db_path)
    store = open_store(settings)
    try:
        assert schema_version(store) == LATEST
        assert {"annotations_created", "leases_holder"} <= _indexes(settings.db_path)
        # the data is all there, and the store works on it
        assert [s.path for s in store.samples()] == ["/pool/a.png", "/pool/b.png"]
        assert store.current_annotations()[1].annotator == "alice" and store.labels() == ["ok"]
        assert store.leased_ids() == {2} and store.jobs.live_retrain()["id"] == 1
        assert store.add_sample("h3", "/pool/c.png", 8, 8) == (3, True)
        assert store.add_annotation(2, "correct", "ok", "bob", respect_leases=True) is True
        rows = store.query("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == list(range(1, LATEST + 1))
    finally:
        store.close()
    again = open_store(settings)  # a second open applies nothing
    assert len(again.query("SELECT * FROM schema_migrations")) == LATEST
    again.close()


def test_a_store_newer_than_this_code_is_refused(tmp_path: Path, db_url: str | None) -> None:
    where = db_url or tmp_path / "db.sqlite3"
    store = open_store(where)
    with store.tx() as c:
        c.execute("INSERT INTO schema_migrations(version, name, applied_at) VALUES (?, 'from the future', 0)", (LATEST + 7,))
    store.close()
    with pytest.raises(Conflict, match=f"schema version {LATEST + 7}; this edge-al knows versions up to {LATEST}"):
        open_store(where)


def test_concurrent_opens_apply_each_migration_once(tmp_path: Path, db_url: str | None) -> None:
    where = db_url or tmp_path / "db.sqlite3"
    barrier = threading.Barrier(6)
    stores: list[Store] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        barrier.wait()
        try:
            stores.append(open_store(where))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(stores) == 6
    rows = stores[0].query("SELECT version FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in rows] == list(range(1, LATEST + 1))
    for s in stores:
        s.close()


def test_many_fresh_sqlite_files_opened_by_six_threads_at_once_all_open(tmp_path: Path) -> None:
    """Switching a new file to WAL answers "database is locked" without waiting when another
    connection is switching it too (about 1 in 20 such races failed an open before the retry, so 50
    races catch it nine times in ten)."""
    failures: list[str] = []

    def open_one(where: Path, barrier: threading.Barrier, stores: list[Store]) -> None:
        barrier.wait()
        try:
            stores.append(open_store(where))
        except Exception as exc:
            failures.append(f"{where.name}: {exc}")

    for trial in range(50):
        barrier, stores = threading.Barrier(6), []
        where = tmp_path / f"db{trial}.sqlite3"
        threads = [threading.Thread(target=open_one, args=(where, barrier, stores)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for s in stores:
            s.close()
    assert failures == []


def test_the_backend_follows_settings_and_urls(tmp_path: Path, db_url: str | None, db_backend: str) -> None:
    store = open_store(Settings(home=tmp_path / "home", db_url=db_url))
    assert store.backend.name == db_backend
    if db_backend == "sqlite":
        assert (tmp_path / "home" / "edge-al.sqlite3").exists()
        assert "SQLite file edge-al.sqlite3" == store.backend.describe()
    else:
        assert not (tmp_path / "home" / "edge-al.sqlite3").exists()
        with pytest.raises(InvalidInput, match="SQLite stores only"):
            store.backup_to(tmp_path / "copy.sqlite3")
    store.close()


def test_edge_al_db_is_read_by_the_one_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_AL_DB", "postgresql://edge@db:5432/edge_al")
    assert load_settings(home=tmp_path).db_url == "postgresql://edge@db:5432/edge_al"
    monkeypatch.setenv("EDGE_AL_DB", "")  # empty counts as unset: the SQLite file in the home
    assert load_settings(home=tmp_path).db_url is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u:p@db/edge", "must be a postgresql:// URL"),
        ("postgresql://user@127.0.0.1:5432", "with a database name"),
        ("postgresql://user:secret@127.0.0.1:notaport/edge", "such as postgresql://"),
    ],
)
def test_a_malformed_db_url_is_invalid_input(url: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        open_store(url)
    assert "secret" not in str(info.value)


def test_an_unreachable_server_is_store_unavailable_without_the_password() -> None:
    with _refused_port() as port:
        with pytest.raises(
            StoreUnavailable, match=r"Cannot connect to the PostgreSQL database postgresql://edge:\*\*\*@127\.0\.0\.1"
        ) as info:
            open_store(f"postgresql://edge:secret@127.0.0.1:{port}/edge_al")
    assert "secret" not in str(info.value) and "Check EDGE_AL_DB" in str(info.value)
    assert redact_url("postgresql://u:pw@h:5/d") == "postgresql://u:***@h:5/d" and redact_url("postgresql://h/d") == "postgresql://h/d"


def test_the_cli_reports_a_bad_db_url_without_a_traceback(tmp_path: Path) -> None:
    with _refused_port() as port:
        for url, expected in (("redis://x/0", "must be a postgresql:// URL"), (f"postgresql://e:pw@127.0.0.1:{port}/d", "Cannot connect")):
            proc = subprocess.run(
                [sys.executable, "-m", "edge_al", "--home", str(tmp_path / "h"), "status"],
                env={**os.environ, "EDGE_AL_DB": url},
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=120,
            )
            assert proc.returncode == 1 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
            assert "pw@" not in proc.stderr


def test_postgres_rejects_nul_text_as_invalid_input(postgres_server: Any) -> None:
    """SQLite text may hold NUL characters, PostgreSQL's cannot: a clear InvalidInput, not a 500."""
    url = postgres_server.create_database()
    store = open_store(url)
    sid, _ = store.add_sample("h1", "/a.png", 4, 4)
    store.add_label("ok")
    with pytest.raises(InvalidInput, match="NUL"):
        store.add_annotation(sid, "correct", "ok", "al\x00ice")
    assert store.current_annotations() == {}  # the transaction was rolled back
    assert store.add_annotation(sid, "correct", "ok", "alice") is True  # and the connection is usable
    store.close()
    postgres_server.drop_database(url)


def test_a_sqlite_line_box_never_imports_psycopg(tmp_path: Path) -> None:
    code = (
        "import sys; from edge_al.store import open_store; import edge_al.api, edge_al.cli, edge_al.jobs; "
        f"s = open_store({str(tmp_path / 'db.sqlite3')!r}); s.add_label('x'); "
        "assert 'psycopg' not in sys.modules, 'psycopg imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


@contextlib.contextmanager
def _refused_port() -> Iterator[int]:
    """A 127.0.0.1 port held bound but not listening: a connection to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_a_connection_the_server_dropped_costs_one_error_then_reconnects(postgres_server: Any) -> None:
    """A PostgreSQL restart or a dropped connection: the call on the dead connection is a clear
    StoreUnavailable (HTTP 503), never retried behind the caller's back (a write might have
    committed); the next call opens a new connection."""
    import psycopg

    url = postgres_server.create_database()
    store = open_store(url)
    store.add_label("ok")
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    with pytest.raises(StoreUnavailable, match="did not answer"):
        store.labels()
    assert store.labels() == ["ok"]
    store.close()
    postgres_server.drop_database(url)
