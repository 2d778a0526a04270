"""A real ``redis-server`` for the tests: a temporary folder, a free port on 127.0.0.1, no persistence.

``scripts/setup-redis.sh`` installs Debian's ``redis-server``. Where it is missing the Redis tests
skip, except under ``CI=true``, where they fail: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from export.tools.machine import free_port

__all__ = ["RedisServer", "redis_server_or_skip", "start_redis"]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """One ``redis-server`` process; ``url(db)`` is its address, ``stop()`` ends it (kill -9 with ``hard``)."""

    proc: subprocess.Popen[bytes]
    port: int
    folder: Path

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def log(self) -> str:
        p = self.folder / "redis.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def stop(self, hard: bool = False) -> None:
        if self.proc.poll() is None:
            if hard:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"FLUSHALL\r\n")
            if not s.recv(16).startswith(b"+OK"):
                raise AssertionError("FLUSHALL failed")


def start_redis(folder: Path, port: int | None = None, timeout: float = 20.0) -> RedisServer:
    """Start ``redis-server`` on ``port`` (a free one when None) and wait until it answers PING."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise FileNotFoundError("redis-server is not installed (scripts/setup-redis.sh)")
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(5):  # a free port can be taken between the probe and the bind: try another
        chosen = port or free_port()
        cmd = [exe, "--port", str(chosen), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        cmd += ["--dir", str(folder), "--logfile", str(folder / "redis.log"), "--daemonize", "no"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = RedisServer(proc, chosen, folder)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _ping(chosen):
                return server
            time.sleep(0.05)
        server.stop(hard=True)
        if port is not None:
            break
    raise RuntimeError(f"redis-server did not start on 127.0.0.1:{chosen}:\n{server.log}")


def redis_server_or_skip(folder: Path) -> RedisServer:
    """``start_redis``, or skip the test when redis-server cannot start (fail instead under CI=true)."""
    try:
        return start_redis(folder)
    except (FileNotFoundError, RuntimeError) as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the Redis tests cannot run: {exc}")
        pytest.skip(f"no Redis for these tests: {exc} (run scripts/setup-redis.sh)")
