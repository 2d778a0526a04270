"""Shared fixtures. A module marked ``stores`` runs each of its tests against both store backends:
SQLite (a file in the test's home) and PostgreSQL (a fresh database on one real server that the
session starts in a temporary folder, see ``export.tools.postgres``). Elsewhere the store is SQLite.

Without PostgreSQL binaries or psycopg the PostgreSQL half is skipped, except under ``CI=true``,
where it fails: CI must run both (``scripts/test`` installs them through scripts/setup-postgres.sh).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_al.config import Settings
from edge_al.registry import Registry
from edge_al.store import Store, open_store

BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("stores"):
        metafunc.parametrize("db_backend", BACKENDS, indirect=True, scope="module")


@pytest.fixture(scope="session")
def db_backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgresql`` (both in a module marked ``stores``; SQLite elsewhere)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One real PostgreSQL server for the session (started on first use, stopped at the end)."""
    from export.tools.postgres import PostgresUnavailable, TemporaryPostgres

    try:
        import psycopg  # noqa: F401
    except ModuleNotFoundError:
        _unavailable("psycopg is not installed (pip install -e '.[dev]')")
    server = TemporaryPostgres()
    try:
        server.start()
    except PostgresUnavailable as exc:
        server.stop()
        _unavailable(str(exc))
    yield server
    server.stop()


def _unavailable(why: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is needed in CI: {why}", pytrace=False)
    pytest.skip(f"PostgreSQL not available here: {why}")


def _new_db(request: pytest.FixtureRequest, backend: str) -> Iterator[str | None]:
    if backend == "sqlite":
        yield None
        return
    server = request.getfixturevalue("postgres_server")
    url = server.create_database()
    yield url
    server.drop_database(url)  # ends the connections a test left open


@pytest.fixture
def db_url(request: pytest.FixtureRequest, db_backend: str) -> Iterator[str | None]:
    """A fresh PostgreSQL database's URL for this test, or None (SQLite in the home)."""
    yield from _new_db(request, db_backend)


@pytest.fixture(scope="module")
def module_db_url(request: pytest.FixtureRequest, db_backend: str) -> Iterator[str | None]:
    """``db_url`` shared by a module's tests (for module-scoped workspaces)."""
    yield from _new_db(request, db_backend)


@pytest.fixture(scope="session", autouse=True)
def backbone_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One machine-wide backbone cache for the session (``EDGE_AL_BACKBONE_CACHE``, also for the CLI
    and the servers the tests start): a backbone of the same weights, size and calibration images is
    built once, by the first test that needs it, and copied into every other workspace."""
    path = tmp_path_factory.mktemp("backbone-cache")
    before = os.environ.get("EDGE_AL_BACKBONE_CACHE")
    os.environ["EDGE_AL_BACKBONE_CACHE"] = str(path)
    yield path
    if before is None:
        os.environ.pop("EDGE_AL_BACKBONE_CACHE", None)
    else:
        os.environ["EDGE_AL_BACKBONE_CACHE"] = before


@pytest.fixture
def settings(tmp_path: Path, db_url: str | None, backbone_cache: Path) -> Settings:
    return Settings(home=tmp_path / "home", db_url=db_url, backbone_cache=backbone_cache)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = open_store(settings)
    yield s
    s.close()


@pytest.fixture
def registry(settings: Settings) -> Registry:
    return Registry(settings.registry_dir)
