"""The two databases a :class:`~edge_al.store.Store` can sit on: an SQLite file (the embedded
default) or a PostgreSQL server (``EDGE_AL_DB=postgresql://...``, the ``postgres`` extra).

Store code writes one SQL text, in the subset both understand: ``?`` placeholders,
``INSERT ... ON CONFLICT ... DO ...``, ``RETURNING id``. A backend opens connections that take that
text and give rows readable by column name and by index (``sqlite3.Row``'s way), and starts the
write transactions, which serialise across every process that shares the database:

- SQLite: ``BEGIN IMMEDIATE`` takes the file's one writer lock; WAL mode, ``synchronous=FULL``.
- PostgreSQL (psycopg 3): ``BEGIN`` then ``pg_advisory_xact_lock`` on one key, so write
  transactions of all processes run one at a time, as on SQLite, and a check-then-write (a lease,
  "no live retrain, so queue one") holds across API processes and workers. Reads run outside
  transactions (autocommit, read committed) and never wait for the lock.

Schema text uses type tokens (``{id}``, ``{ref}``, ``{real}``, ``{blob}``, ``{without_rowid}``)
that each backend spells in its own dialect (:meth:`Backend.ddl`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit

from edge_al.config import redact_url
from edge_al.errors import InvalidInput, MissingDependency, StoreUnavailable

__all__ = ["POSTGRES_SCHEMES", "Backend", "Conn", "Cursor", "PostgresBackend", "Row", "SqliteBackend", "backend_for"]

POSTGRES_SCHEMES = ("postgresql", "postgres")
# the one advisory-lock key every write transaction takes (any constant bigint; this one spells "edgeal")
_WRITE_LOCK = 0x656467656160


class Row(Protocol):
    """One result row: by column name (``row["id"]``) or index (``row[0]``); ``dict(row)``."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    """What a statement gives back: rows (by name and index) and the count of changed rows."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """One connection of a backend: ``sqlite3.Connection`` itself, or :class:`_PgConn`."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: str  # "sqlite" or "postgresql"

    def describe(self) -> str:
        """Where the data lives, fit for a message (no password)."""
        ...

    def connect(self) -> Conn: ...

    def begin(self, conn: Conn) -> None:
        """Start a write transaction that excludes every other writer of the database."""
        ...

    def ddl(self, script: str) -> list[str]:
        """The statements of a schema script with its type tokens in this dialect."""
        ...

    def tables(self, conn: Conn) -> set[str]: ...


def _statements(script: str, types: dict[str, str]) -> list[str]:
    return [s.strip() for s in script.format(**types).split(";") if s.strip()]


class SqliteBackend:
    """An SQLite file; one connection per thread (the caller keeps them)."""

    name = "sqlite"
    _TYPES: ClassVar[dict[str, str]] = {
        "id": "INTEGER PRIMARY KEY",
        "ref": "INTEGER",
        "real": "REAL",
        "blob": "BLOB",
        "without_rowid": " WITHOUT ROWID",
    }

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return f"SQLite file {self.path.name}"

    def connect(self) -> Conn:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        _wal(conn)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def begin(self, conn: Conn) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def ddl(self, script: str) -> list[str]:
        return _statements(script, self._TYPES)

    def tables(self, conn: Conn) -> set[str]:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _wal(conn: sqlite3.Connection, wait_s: float = 30.0) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the lock it needs.

    Switching a new file to WAL takes an exclusive lock, and SQLite answers "database is locked" at
    once, without its busy handler, when another connection is switching it too: six threads opening
    a fresh store together failed 7 of 900 opens so. The mode is persistent, so this is a race of the
    first opens only; the retries wait as long as the busy timeout would.
    """
    deadline = time.monotonic() + wait_s
    delay = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)  # back off: the other connection's switch takes microseconds
        delay = min(2 * delay, 0.05)


class PostgresBackend:
    """A PostgreSQL database by URL (``postgresql://user:password@host:port/dbname``)."""

    name = "postgresql"
    _TYPES: ClassVar[dict[str, str]] = {
        "id": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        "ref": "BIGINT",
        "real": "DOUBLE PRECISION",
        "blob": "BYTEA",
        "without_rowid": "",
    }

    def __init__(self, url: str, connect_timeout: float = 10.0) -> None:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError as exc:
            raise InvalidInput(f"EDGE_AL_DB must be a URL such as postgresql://user:password@host:5432/edge_al ({exc}).") from None
        if parts.scheme not in POSTGRES_SCHEMES or not parts.path.strip("/"):
            raise InvalidInput(
                f"EDGE_AL_DB must be a URL such as postgresql://user:password@host:5432/edge_al, with a database name. "
                f"Got {redact_url(url)!r} instead."
            )
        self.url = url
        self.connect_timeout = connect_timeout
        self._psycopg = _import_psycopg()

    def describe(self) -> str:
        return f"PostgreSQL database {redact_url(self.url)}"

    def connect(self) -> Conn:
        psycopg = self._psycopg
        try:
            raw = psycopg.connect(self.url, autocommit=True, row_factory=_row_factory, connect_timeout=max(1, int(self.connect_timeout)))
        except psycopg.Error as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreUnavailable(
                f"Cannot connect to the {self.describe()}: {detail}. Check EDGE_AL_DB and that the server is running and reachable."
            ) from None
        # SQLite waits up to 30 s for the writer lock (busy_timeout); the same here for the advisory lock
        raw.execute("SET lock_timeout = '30s'")
        return _PgConn(raw, psycopg)

    def begin(self, conn: Conn) -> None:
        conn.execute("BEGIN")
        conn.execute("SELECT pg_advisory_xact_lock(?)", (_WRITE_LOCK,))

    def ddl(self, script: str) -> list[str]:
        return _statements(script, self._TYPES)

    def tables(self, conn: Conn) -> set[str]:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ModuleNotFoundError:
        raise MissingDependency("A PostgreSQL store needs psycopg 3: install edge-al[postgres] (pip install 'psycopg[binary]').") from None
    return psycopg


class _PgRow:
    """A PostgreSQL row read like ``sqlite3.Row``: ``row["name"]``, ``row[0]``, ``keys()``, ``dict(row)``."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: Sequence[Any]) -> None:
        self._index = index
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._index[key] if isinstance(key, str) else key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Any:
    index = {col.name: i for i, col in enumerate(cursor.description or ())}
    return lambda values: _PgRow(index, values)


class _PgConn:
    """A psycopg connection that takes the store's SQL (``?`` placeholders) and turns a lost
    server into :class:`StoreUnavailable` and NUL characters (PostgreSQL text cannot hold them)
    into :class:`InvalidInput`."""

    def __init__(self, raw: Any, psycopg: Any) -> None:
        self._raw = raw
        self._psycopg = psycopg

    @property
    def in_transaction(self) -> bool:
        return bool(self._raw.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE)

    @property
    def broken(self) -> bool:
        return bool(self._raw.broken or self._raw.closed)

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        cur = self._raw.cursor()
        self._run(cur.execute, sql, tuple(parameters))
        return cur

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor:
        cur = self._raw.cursor()
        self._run(cur.executemany, sql, [tuple(p) for p in parameters])
        return cur

    def _run(self, call: Any, sql: str, params: Any) -> None:
        psycopg = self._psycopg
        try:
            call(sql.replace("%", "%%").replace("?", "%s"), params)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"The PostgreSQL store did not answer: {str(exc).strip() or type(exc).__name__}") from exc
        except psycopg.DataError as exc:
            if "NUL" not in str(exc):
                raise
            raise InvalidInput("Text fields must not contain NUL (0x00) characters.") from None

    def close(self) -> None:
        self._raw.close()


def backend_for(target: str | Path) -> Backend:
    """The backend of a ``postgresql://`` URL or of an SQLite file path."""
    text = str(target)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in POSTGRES_SCHEMES:
        return PostgresBackend(text)
    if scheme:
        raise InvalidInput(
            f"EDGE_AL_DB must be a postgresql:// URL (or unset, for the SQLite file in the workspace). Got a {scheme}:// URL instead."
        )
    return SqliteBackend(text)
