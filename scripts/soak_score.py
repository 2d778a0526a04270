#!/usr/bin/env python
"""Soak test of POST /v1/score: 16 clients for N minutes against a real `edge-al serve`.

Prepares a workspace (or uses ``--home``) with an active model (as scripts/bench_serve.py does:
a trained ``--arch`` model with the train extra, else, or with ``--model tiny``, the tiny
projection model of tests/helpers.py), issues a scorer key, starts ``edge-al serve`` with
authentication on 127.0.0.1, and drives it with ``--clients`` keep-alive clients sending single
JPEGs. Every ``--every`` seconds it prints requests, req/s, errors and the server's resident
memory (VmRSS from /proc, Linux); at the end, the RSS after warm-up against the last one. The
service passes when no request failed and RSS is flat after warm-up (growth under
``--max-growth-mib``).

    python scripts/soak_score.py                          # 16 clients, 10 minutes
    python scripts/soak_score.py --minutes 3 --model tiny
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import bench_serve  # the workspace and server helpers of the serving benchmark (this script's folder is on sys.path)

HERE = Path(__file__).resolve().parent

HOST = bench_serve.HOST


class Load:
    """Client threads and their shared counters."""

    def __init__(self, port: int, key: str, bodies: list[bytes], clients: int) -> None:
        self.port, self.key, self.bodies, self.clients = port, key, bodies, clients
        self.lock = threading.Lock()
        self.ok = 0
        self.errors = 0
        self.samples: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(clients)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return self.ok, self.errors

    def _client(self, k: int) -> None:
        conn = bench_serve.ScoreClient(self.port, {"Authorization": f"Bearer {self.key}"})
        i = k
        while not self.stop.is_set():
            body = self.bodies[i % len(self.bodies)]
            i += self.clients
            ok, data = conn.post(body)
            with self.lock:
                if ok:
                    self.ok += 1
                else:
                    self.errors += 1
                    if len(self.samples) < 5:
                        self.samples.append(data[:300].decode("utf-8", "replace"))
        conn.close()


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB (VmRSS), NaN where /proc cannot say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def host_available_mib() -> float:
    """The host's MemAvailable in MiB: a soak on a shared machine can starve for memory that
    another process took, which shows here and not in the server's own RSS."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def start_server(home: Path, port: int, threads: int) -> tuple[subprocess.Popen[bytes], str, Path]:
    """A scorer key and `edge-al serve` with authentication on; returns (process, key, log path)."""
    from edge_al.api.auth import create_key
    from edge_al.config import Settings
    from edge_al.store import open_store

    store = open_store(Settings(home=home))
    try:
        _, key = create_key(store, "scorer", "soak")
    finally:
        store.close()
    log = home / "soak-server.log"
    cmd = [sys.executable, "-m", "edge_al", "--home", str(home), "serve", "--host", HOST, "--port", str(port), "--threads", str(threads)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=str(HERE.parent), stdout=out, stderr=subprocess.STDOUT)
    return proc, key, log


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/readyz")
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server was not ready within {timeout:.0f} s; see its log")


def soak(proc: subprocess.Popen[bytes], load: Load, minutes: float, every: float) -> list[dict[str, Any]]:
    """Run the load for ``minutes``; one sample of counters and RSS every ``every`` seconds."""
    print(f"{'t s':>6} {'requests':>9} {'req/s':>7} {'errors':>6} {'RSS MiB':>8} {'host free MiB':>13}", flush=True)
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()
    last_ok, last_t = 0, t0
    load.start()
    end = t0 + minutes * 60.0
    while time.monotonic() < end and proc.poll() is None:
        time.sleep(max(0.0, min(every, end - time.monotonic())))
        now = time.monotonic()
        ok, errors = load.counts()
        row = {"t": now - t0, "requests": ok, "req_s": (ok - last_ok) / max(1e-9, now - last_t), "errors": errors,
               "rss": rss_mib(proc.pid), "host_free": host_available_mib()}  # fmt: skip
        samples.append(row)
        last_ok, last_t = ok, now
        print(f"{row['t']:>6.0f} {ok:>9} {row['req_s']:>7.1f} {errors:>6} {row['rss']:>8.1f} {row['host_free']:>13.0f}", flush=True)
    load.join()
    if proc.poll() is not None:
        print(f"the server exited with {proc.returncode} during the soak")
    return samples


def verdict(samples: list[dict[str, Any]], warmup_s: float, max_growth: float, errors: int, alive: bool) -> bool:
    warm = [s for s in samples if s["t"] >= warmup_s] or samples[-1:]
    if not warm:
        print("no samples")
        return False
    first, last = warm[0]["rss"], warm[-1]["rss"]
    peak = max(s["rss"] for s in warm)
    growth = last - first
    rates = [s["req_s"] for s in warm]
    print(f"\nafter warm-up ({warmup_s:g} s): RSS {first:.1f} -> {last:.1f} MiB (growth {growth:+.1f} MiB, peak {peak:.1f}); "
          f"req/s min {min(rates):.1f} mean {sum(rates) / len(rates):.1f} max {max(rates):.1f}")  # fmt: skip
    ok = alive and errors == 0 and growth < max_growth
    print(f"requests {samples[-1]['requests']}, errors {errors}; RSS flat (growth < {max_growth:g} MiB): "
          f"{'yes' if growth < max_growth else 'NO'} -> {'PASS' if ok else 'FAIL'}")  # fmt: skip
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--home", help="workspace (default: a temporary one, removed afterwards)")
    p.add_argument("--model", choices=("auto", "real", "tiny"), default="auto")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--every", type=float, default=15.0, help="seconds between samples (default 15)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS must stay flat (default 60)")
    p.add_argument("--max-growth-mib", type=float, default=20.0, help="allowed RSS growth after warm-up (default 20 MiB)")
    p.add_argument("--threads", type=int, default=16, help="server request threads (default 16)")
    a = p.parse_args(argv)
    if not 0 < a.minutes <= 24 * 60 or not 1 <= a.clients <= 256:
        p.error("--minutes must be in (0, 1440] and --clients in [1, 256]")
    tmp = None if a.home else Path(tempfile.mkdtemp(prefix="edge-al-soak-"))
    home = Path(a.home).resolve() if a.home else tmp
    assert home is not None
    notes: list[str] = []
    proc = None
    try:
        print("model:", bench_serve.prepare(home, a.model, a.image_size, notes, arch=a.arch), *notes)
        bodies = [f.read_bytes() for f in sorted((home / "images").rglob("*.jpg"))[:32]]
        port = bench_serve.free_port()
        proc, key, log = start_server(home, port, a.threads)
        wait_ready(proc, port, log)
        print(f"host: {bench_serve._isa()}; {a.clients} clients for {a.minutes:g} min on POST /v1/score", flush=True)
        load = Load(port, key, bodies, a.clients)
        samples = soak(proc, load, a.minutes, a.every)
        for s in load.samples:
            print("error:", s)
        ok = verdict(samples, a.warmup, a.max_growth_mib, load.counts()[1], proc.poll() is None)
        return 0 if ok else 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
