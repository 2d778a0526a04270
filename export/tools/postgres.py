"""A throwaway PostgreSQL server in a temporary folder, from Debian's packages (``postgresql-15``):
what the tests and ``scripts/bench_multiprocess.py`` run the PostgreSQL store against.

    with TemporaryPostgres() as pg:
        url = pg.create_database()          # postgresql://postgres@127.0.0.1:<port>/<name>

The server listens on 127.0.0.1 at a free port (its socket in its own folder), trusts local
connections, and is stopped and removed on ``stop()``. As root it runs as the ``postgres`` user
(PostgreSQL refuses root). ``durable=False`` (the tests) turns fsync off; a benchmark keeps it on.
``scripts/setup-postgres.sh`` installs the packages when they are missing.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from .machine import free_port

__all__ = ["PostgresUnavailable", "TemporaryPostgres", "find_bindir"]


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries here, or the server would not start."""


def find_bindir() -> Path:
    """The folder of ``initdb``/``pg_ctl``: on PATH, else Debian's newest ``/usr/lib/postgresql/<v>/bin``."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0
    )
    if not found:
        raise PostgresUnavailable("No PostgreSQL server binaries (initdb): run scripts/setup-postgres.sh (apt-get install postgresql-15).")
    return Path(found[-1]).parent


class TemporaryPostgres:
    """One PostgreSQL server in a temporary folder; ``start()`` / ``stop()`` or a ``with`` block."""

    _names = itertools.count(1)

    def __init__(self, *, durable: bool = False, max_connections: int = 400) -> None:
        self.durable = durable
        self.max_connections = max_connections
        self.port = 0
        self.folder: Path | None = None
        self._run_as: str | None = "postgres" if os.geteuid() == 0 else None

    # -- life ----------------------------------------------------------------------------------
    def start(self) -> TemporaryPostgres:
        bindir = find_bindir()
        self.folder = Path(tempfile.mkdtemp(prefix="edge-al-pg-"))
        if self._run_as is not None:
            try:
                user = pwd.getpwnam(self._run_as)
            except KeyError:
                raise PostgresUnavailable("Running as root needs the 'postgres' user (the Debian package creates it).") from None
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        data = self.folder / "data"
        self._run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale"])
        for _attempt in range(5):  # a free port can be taken between the probe and the bind
            self.port = free_port()
            if self._try_start(bindir, data):
                return self
        raise PostgresUnavailable(f"PostgreSQL did not start: {self._log_tail()}")

    def _try_start(self, bindir: Path, data: Path) -> bool:
        opts = [f"-p {self.port}", "-h 127.0.0.1", f"-k {data}", f"-c max_connections={self.max_connections}"]
        if not self.durable:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        cmd = [str(bindir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data), "-l", str(self._log), "-o", " ".join(opts)]
        return subprocess.run(cmd, capture_output=True, user=self._run_as, check=False).returncode == 0

    def stop(self) -> None:
        if self.folder is None:
            return
        data = self.folder / "data"
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [str(find_bindir() / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(data)],
                capture_output=True,
                user=self._run_as,
                check=False,
            )
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None

    def __enter__(self) -> TemporaryPostgres:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- databases -----------------------------------------------------------------------------
    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its URL."""
        name = name or f"edge_al_{os.getpid()}_{next(self._names)}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url_or_name: str) -> None:
        """Drop a database, ending the connections still open to it."""
        name = url_or_name.rsplit("/", 1)[-1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, sql: str) -> Any:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            return conn.execute(sql)

    # -- helpers -------------------------------------------------------------------------------
    @property
    def _log(self) -> Path:
        assert self.folder is not None
        return self.folder / "server.log"

    def _log_tail(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no server log)"

    def _run(self, cmd: list[str]) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True, user=self._run_as, check=False)
        if proc.returncode != 0:
            raise PostgresUnavailable(f"{Path(cmd[0]).name} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
