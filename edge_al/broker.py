"""The job queue's broker: huey on SQLite in the workspace (one box), or on Redis for several boxes.

``EDGE_AL_HUEY_URL`` selects Redis: ``redis://[:password@]host[:port][/db]``, ``rediss://`` (TLS) or
``unix:///path/to/redis.sock[?db=N]``. The URL is checked here, once, with a message that names the
variable; connections time out (5 s to connect, 10 s per command) instead of hanging a request when
the broker's host is unreachable. Only task messages live in the broker: the job records live in the
store, so a broker that loses its memory loses no job (``JobManager.recover`` queues again what a
record says is queued and the broker does not hold).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from .config import redact_url
from .errors import InvalidInput, MissingDependency

__all__ = ["BROKER_ERRORS", "make_huey", "validate_redis_url"]

HUEY_NAME = "edge-al"
CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 10.0  # above huey's 1 s blocking read


def _check_parts(url: str, parts: SplitResult) -> None:
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket's path (unix:///run/redis/redis.sock)")
        return
    if not parts.hostname:
        raise ValueError("the URL names no host")
    _ = parts.port  # raises ValueError for a port that is not a number in 0-65535
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"the database after the host must be a number (/0). Got /{db}")


def validate_redis_url(url: str) -> str:
    """``url`` when it is a usable Redis URL; ``InvalidInput`` naming ``EDGE_AL_HUEY_URL`` otherwise."""
    hint = "Set EDGE_AL_HUEY_URL to redis://host:6379/0 (rediss:// for TLS, unix:///path.sock), or leave it empty for SQLite."
    if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise InvalidInput(f"EDGE_AL_HUEY_URL must be a redis://, rediss:// or unix:// URL. Got {url!r} instead. {hint}")
    try:
        _check_parts(url, urlsplit(url))
    except ValueError as exc:
        raise InvalidInput(f"EDGE_AL_HUEY_URL is not a usable Redis URL ({exc}): {redact_url(url)!r}. {hint}") from None
    return url


def _redis_errors() -> tuple[type[BaseException], ...]:
    try:
        import redis
    except ModuleNotFoundError:
        return ()
    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


# what a broker that cannot be reached raises (empty when the redis package is absent)
BROKER_ERRORS: tuple[type[BaseException], ...] = _redis_errors()


def make_huey(url: str | None, home: Path) -> Any:
    """A huey instance: on Redis at ``url``, or on SQLite at ``<home>/jobs.sqlite3`` when ``url`` is empty.

    Creating it does not connect: a Redis that is down is found at the first enqueue or dequeue."""
    if not url:
        from huey import SqliteHuey

        home.mkdir(parents=True, exist_ok=True)
        return SqliteHuey(HUEY_NAME, filename=str(home / "jobs.sqlite3"), results=False, utc=True, fsync=True)
    validate_redis_url(url)
    try:
        import redis
    except ModuleNotFoundError:
        raise MissingDependency("A Redis job queue (EDGE_AL_HUEY_URL) needs the redis package: pip install 'edge-al[redis]'.") from None
    from huey import RedisHuey

    try:
        pool = redis.ConnectionPool.from_url(
            url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=COMMAND_TIMEOUT_S, health_check_interval=30
        )
    except ValueError as exc:
        raise InvalidInput(f"EDGE_AL_HUEY_URL is not a usable Redis URL ({exc}): {redact_url(url)!r}.") from None
    return RedisHuey(HUEY_NAME, connection_pool=pool, results=False, utc=True)
