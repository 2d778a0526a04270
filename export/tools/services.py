"""Real ``edge-al serve`` processes for tests and benchmarks: a central service and scoring boxes
(``serve --role scoring``) on free 127.0.0.1 ports, killed (-9 or TERM) and restarted at will."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from edge_al.api.auth import create_key
from edge_al.config import Settings
from edge_al.store import open_store

from .fixtures import build_workspace
from .machine import free_port

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

__all__ = ["Proc", "central_shas", "free_port", "new_images", "start_box", "start_central", "wait_for"]


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 60.0, every: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy (returned), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            last = check()
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def new_images(n: int, seed: int, size: int = 48) -> list[bytes]:
    """``n`` distinct PNGs (random pixels), none of which any pool holds."""
    rng = np.random.default_rng(seed)
    return [bytes(cv2.imencode(".png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))[1]) for _ in range(n)]


@dataclass
class Proc:
    """One ``edge-al serve`` process and how to reach it."""

    cmd: list[str]
    env: dict[str, str]
    port: int
    log: Path
    key: str
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> Proc:
        self.starts += 1
        with open(self.log, "ab") as out:
            out.write(f"\n==== start {self.starts}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        wait_for(f"{self.cmd[4:6]} to answer /healthz", lambda: self._alive() and self.call("GET", "/healthz", timeout=2)[0] == 200)
        if wait_ready:
            wait_for("/readyz", lambda: self.call("GET", "/readyz", timeout=2)[0] == 200)
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        return True

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def call(self, method: str, path: str, data: bytes | None = None, ctype: str | None = None, key: str | None = None,
             timeout: float = 30.0) -> tuple[int, Any]:  # fmt: skip
        headers = {"Authorization": f"Bearer {key or self.key}"}
        if ctype:
            headers["Content-Type"] = ctype
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw, status, rtype = resp.read(), resp.status, resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raw, status, rtype = exc.read(), exc.code, exc.headers.get("Content-Type", "")
        return status, json.loads(raw) if "json" in rtype else raw

    def score(self, png: bytes, store: bool = False) -> tuple[int, Any]:
        return self.call("POST", "/v1/score" + ("?store=true" if store else ""), png, "image/png")


def start_central(root: Path, n: int = 8, env: dict[str, str] | None = None) -> tuple[Proc, Settings, dict[str, str]]:
    """A central service on a workspace with the tiny model active; keys ``scorer`` and ``admin``."""
    settings, _ = build_workspace(root, n=n, score=False)
    store = open_store(settings)
    keys = {role: create_key(store, role, f"{role}-box-test")[1] for role in ("scorer", "admin")}
    store.close()
    port = free_port()
    cmd = [sys.executable, "-m", "edge_al", "--home", str(settings.home), "serve", "--port", str(port), "--threads", "8"]
    proc = Proc(cmd, {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, port, root / "central.log", keys["admin"])
    return proc.start(), settings, keys


def start_box(root: Path, central: Proc | None, key: str, env: dict[str, str] | None = None, wait_ready: bool = True,
              folder: Path | None = None) -> Proc:  # fmt: skip
    """A scoring box with its own home under ``root``, following ``central`` with a scorer ``key``, or
    the registry ``folder`` (then without a URL, and ``key`` is only what the box accepts)."""
    root.mkdir(parents=True, exist_ok=True)
    key_file = root / "central.key"
    key_file.write_text(key + "\n")
    cmd = [sys.executable, "-m", "edge_al", "--home", str(root / "home"), "serve", "--role", "scoring", "--port", str(free_port())]
    cmd += ["--central-folder", str(folder)] if folder is not None else ["--central", central.base if central else ""]
    box_env = {"PYTHONUNBUFFERED": "1", "EDGE_AL_FOLLOW_POLL_S": "0.5", "EDGE_AL_OUTBOX_MAX_BACKOFF_S": "1",
               "EDGE_AL_CENTRAL_KEY_FILE": str(key_file), **(env or {})}  # fmt: skip
    proc = Proc(cmd, {**os.environ, **box_env}, int(cmd[cmd.index("--port") + 1]), root / "box.log", key)
    return proc.start(wait_ready)


def central_shas(settings: Settings) -> list[str]:
    """Every sample's SHA-256 in the central pool, one per row."""
    store = open_store(settings)
    try:
        return [store.sample(int(i)).sha256 for i in store.sample_ids()]
    finally:
        store.close()
