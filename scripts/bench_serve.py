#!/usr/bin/env python
"""Speed benchmark of the scoring service: adaptive batching vs fixed batching vs batch-1, one run.

Prepares a workspace with a real model, starts the real server once per mode as a subprocess on
127.0.0.1 (``edge-al serve --no-auth``: the adaptive batcher, the fixed policy
``--batch-policy fixed``, and ``--no-batching``), drives each with 1, 2, 4, 8 and 16 concurrent
keep-alive clients that send single JPEGs to ``POST /v1/score``, and prints throughput and
p50/p99 latency per setting, plus each batching mode's throughput / batch-1's at every client
count (targets, issue 9: adaptive >= 1.0x everywhere, >= 1.3x at 16 clients; zero errors).

The model: with the ``train`` extra (torch + export/) a model of ``--arch`` (default: edge_al.config.DEFAULT_ARCH) is trained briefly on
generated images and exported through ``export.workflow`` (INT8 where the gates pass); without it,
or with ``--model tiny``, the projection model of tests/helpers.py at ``--image-size``. The output
says which, with the inference precision the runtime chose. ``--stand-in`` serves a minimal Flask
app around the same ``ModelHolder`` instead of the full API (isolates the dispatcher).

    python scripts/bench_serve.py                    # temporary workspace, every mode, 1/2/4/8/16 clients
    python scripts/bench_serve.py --seconds 10 --clients 1,8,16,32 --model tiny --modes adaptive,batch-1
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_al.config import DEFAULT_ARCH, Settings

ROOT = Path(__file__).resolve().parents[1]  # the repository (docs/benchmarks, the working directory of servers)

HOST = "127.0.0.1"  # the benchmark never talks to anything else
MODES = ("adaptive", "fixed", "batch-1")


# -- workspace ---------------------------------------------------------------------------------
def _jpegs(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[tuple[Path, str]]:
    """Generated coloured-shape JPEGs in three classes (circle, square, stripes), ``root/<class>/``."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        cls = ("circle", "square", "stripes")[i % 3]
        img = np.full((size[1], size[0], 3), rng.integers(0, 120, 3), dtype=np.uint8)
        color = tuple(int(v) for v in rng.integers(130, 255, 3))
        cx, cy = int(rng.integers(size[0] // 4, 3 * size[0] // 4)), int(rng.integers(size[1] // 4, 3 * size[1] // 4))
        r = int(rng.integers(min(size) // 8, min(size) // 3))
        if cls == "circle":
            cv2.circle(img, (cx, cy), r, color, -1)
        elif cls == "square":
            cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
        else:
            for x in range(0, size[0], max(4, r // 2)):
                cv2.line(img, (x, 0), (x, size[1]), color, 3)
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        p = folder / f"img_{i:04d}.jpg"
        cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append((p, cls))
    return out


def prepare(home: Path, model: str, image_size: int, log: list[str], arch: str = "resnet18") -> str:
    """Fill ``home`` with a pool and an active model (unless it has one); returns a description."""
    from edge_al.config import Settings
    from edge_al.pool import ingest
    from edge_al.registry import Registry
    from edge_al.store import open_store

    settings = Settings(home=home)
    registry = Registry(settings.registry_dir)
    mv = registry.active()
    if mv is not None:
        return f"existing model {mv.version} ({mv.meta.get('arch', '?')}, {mv.meta.get('precision', '?')}) in {home}"
    store = open_store(settings)
    files = _jpegs(home / "images", 90, (320, 240))
    ingest(store, settings, [str(home / "images")], labels_from_dirs=True)
    want_real = model in ("auto", "real")
    if want_real:
        try:
            import torch  # noqa: F401

            from export import workflow
        except Exception as exc:  # torch or export/ missing
            if model == "real":
                raise SystemExit(f"--model real needs the train extra and export/: {exc}") from None
            log.append(f"(torch/export not importable: {type(exc).__name__}: {exc}; using the tiny projection model)")
            want_real = False
    if want_real:
        t0 = time.perf_counter()
        ckpt = workflow.train_from_store(settings, store, arch=arch, image_size=image_size, epochs=8, batch_size=16, progress=False)
        mv, report = workflow.export_from_store(settings, store, ckpt, registry=registry, progress=False)
        registry.promote(mv.version)
        gates = report.get("gates", {}) if isinstance(report, dict) else {}
        return (
            f"{arch} {image_size}x{image_size} trained 8 epochs on {len(files)} generated images and exported via "
            f"export.workflow as {mv.version} ({mv.meta.get('precision', '?')}{', fallback' if report.get('fallback') else ''}; "
            f"{len(gates)} gates) in {time.perf_counter() - t0:.0f} s"
        )
    from export.tools.fixtures import publish_tiny

    labels = sorted({c for _, c in files})
    mv = publish_tiny(registry, labels, size=image_size, dim=512)
    return f"tiny projection model (tests/helpers.publish_tiny) {image_size}x{image_size}, embedding 512, fp32 IR, as {mv.version}"


def _precision(home: Path) -> str:
    """The device and inference precision the runtime picks for the active model (as the server will)."""
    from edge_al.config import Settings
    from edge_al.engine import Engine
    from edge_al.registry import Registry

    mv = Registry(Settings(home=home).registry_dir).active()
    if mv is None:
        return "no model"
    d = Engine(mv.xml, batch=8).describe()
    return f"OpenVINO {d['device']} INFERENCE_PRECISION_HINT={d['inference_precision']}, streams {d['streams']}, infer requests {d['infer_requests']}"


# -- server ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, home: Path, port: int, mode: str, args: argparse.Namespace) -> None:
        self.port = port
        if args.stand_in:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-stand-in", "--home", str(home), "--port", str(port)]
        else:
            cmd = [sys.executable, "-m", "edge_al", "--home", str(home), "serve", "--host", HOST, "--port", str(port), "--no-auth"]
            cmd += ["--threads", str(args.threads)]
        cmd += ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
        cmd += ["--no-batching"] if mode == "batch-1" else ["--batch-policy", mode]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log_path = home / f"server-{mode}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"the server exited with {self.proc.returncode}; see {self.log_path}:\n{self.log_path.read_text()[-3000:]}"
                )
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                conn.request("GET", "/readyz")
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                if resp.status == 200:
                    doc: dict[str, Any] = json.loads(body)
                    return doc
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the server was not ready within {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


# -- clients -----------------------------------------------------------------------------------
class ScoreClient:
    """One keep-alive connection that POSTs JPEGs to /v1/score and reconnects after a failure."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.port, self.headers = port, {"Content-Type": "image/jpeg", **headers}
        self.conn = http.client.HTTPConnection(HOST, port, timeout=60)

    def post(self, body: bytes) -> tuple[bool, bytes]:
        """``(200?, the response body or the error)``."""
        try:
            self.conn.request("POST", "/v1/score", body=body, headers=self.headers)
            resp = self.conn.getresponse()
            data = resp.read()
            return resp.status == 200, data
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
            return False, repr(exc).encode()

    def close(self) -> None:
        self.conn.close()


def drive(port: int, bodies: list[bytes], clients: int, seconds: float, max_requests: int) -> dict[str, Any]:
    """``clients`` threads, each with one keep-alive connection, POST single JPEGs until ``seconds``
    pass or each has sent ``max_requests``."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    samples: list[str] = []
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(k: int) -> None:
        conn = ScoreClient(port, {"Connection": "keep-alive"})
        start.wait()
        i = k
        for _ in range(max_requests):
            if time.perf_counter() >= stop_at[0]:
                break
            body = bodies[i % len(bodies)]
            i += clients
            t0 = time.perf_counter()
            ok, data = conn.post(body)
            dt = time.perf_counter() - t0
            if ok:
                lat[k].append(dt)
            else:
                errors[k] += 1
                if len(samples) < 3:
                    samples.append(data[:300].decode("utf-8", "replace"))
        conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    start.wait()
    for t in threads:
        t.join(seconds + 120)
    wall = time.perf_counter() - t0
    all_lat = np.array([x for per in lat for x in per]) * 1000.0
    n = len(all_lat)
    return {
        "clients": clients,
        "requests": n,
        "errors": sum(errors),
        "req_s": n / wall if wall > 0 else 0.0,
        "p50_ms": float(np.percentile(all_lat, 50)) if n else float("nan"),
        "p99_ms": float(np.percentile(all_lat, 99)) if n else float("nan"),
        "error_samples": samples,
    }


_WRK_LUA = """
local bodies = {}
local n = 0
for line in io.lines(os.getenv("EDGE_AL_WRK_LIST")) do
  local f = io.open(line, "rb"); bodies[#bodies + 1] = f:read("*a"); f:close()
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/jpeg"
request = function()
  n = n + 1
  return wrk.format(nil, "/v1/score", nil, bodies[(n % #bodies) + 1])
end
"""


def _ms(text: str) -> float:
    """wrk's latency text (850.00us, 2.51ms, 1.20s) in milliseconds."""
    for suffix, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    raise ValueError(f"not a wrk latency: {text!r}")


def drive_wrk(port: int, files: list[Path], clients: int, seconds: float, work: Path) -> dict[str, Any]:
    """The same load from ``wrk`` (C, event-driven): ``clients`` keep-alive connections on 2
    threads. Python client threads cost the shared 2 cores about as much CPU as the server's
    request handling; wrk leaves those cycles to the server being measured."""
    import re

    listing = work / "wrk-bodies.txt"
    listing.write_text("\n".join(str(f) for f in files) + "\n")
    script = work / "wrk-post.lua"
    script.write_text(_WRK_LUA)
    cmd = ["wrk", "-t", str(min(2, clients)), "-c", str(clients), "-d", f"{max(1, round(seconds))}s", "--latency", "-s", str(script),
           f"http://{HOST}:{port}/v1/score"]  # fmt: skip
    out = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "EDGE_AL_WRK_LIST": str(listing)}, timeout=seconds + 60
    ).stdout
    pct = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)$", out, re.M))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(g) for g in sock.groups()) if sock else 0)
    if not rps or "50" not in pct:
        raise SystemExit(f"could not read wrk's output:\n{out}")
    return {"clients": clients, "req_s": float(rps.group(1)), "p50_ms": _ms(pct["50"]), "p99_ms": _ms(pct.get("99", pct["50"])),
            "errors": errors, "error_samples": [], "load": "wrk"}  # fmt: skip


def metrics_snapshot(port: int) -> dict[str, float]:
    """Batch-size figures from /metrics (names as exported by edge_al.api.metrics, best effort)."""
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        if "dispatch" in name or "batch" in name:
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def _mean_batch(before: dict[str, float], after: dict[str, float]) -> float | None:
    def find(d: dict[str, float], part: str) -> float | None:
        for k, v in d.items():
            if part in k and "{" not in k:
                return v
        return None

    b1, b2 = find(before, "batches_total"), find(after, "batches_total")
    i1, i2 = find(before, "images_total"), find(after, "images_total")
    if None in (b1, b2, i1, i2) or (b2 or 0) - (b1 or 0) <= 0:
        return None
    return ((i2 or 0) - (i1 or 0)) / ((b2 or 0) - (b1 or 0))


# -- the stand-in server -----------------------------------------------------------------------
def serve_stand_in(argv: list[str]) -> int:
    """A minimal Flask app around ModelHolder on waitress: /readyz, /metrics-ish, POST /v1/score."""
    p = argparse.ArgumentParser()
    p.add_argument("--serve-stand-in", action="store_true")
    p.add_argument("--home", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--no-batching", action="store_true")
    p.add_argument("--batch-policy", choices=("adaptive", "fixed"), default="adaptive")
    a = p.parse_args(argv)
    from flask import Flask, jsonify, request
    from waitress import serve

    from edge_al.config import Settings
    from edge_al.dispatch import ModelHolder
    from edge_al.images import probe
    from edge_al.registry import Registry

    settings = Settings(home=Path(a.home))
    holder = ModelHolder(
        settings,
        Registry(settings.registry_dir),
        max_batch=a.max_batch,
        max_wait_ms=a.max_wait_ms,
        batching=not a.no_batching,
        adaptive=a.batch_policy == "adaptive",
    )
    app = Flask("stand-in")

    @app.get("/readyz")
    def readyz() -> Any:
        return (jsonify({"status": "ready", "model_version": holder.version}), 200) if holder.ready else ("not ready", 503)

    @app.get("/metrics")
    def metrics() -> Any:
        s = holder.stats()
        return f"stand_in_dispatch_batches_total {s['batches']}\nstand_in_dispatch_images_total {s['images']}\n"

    @app.post("/v1/score")
    def score() -> Any:
        data = request.get_data()
        info = probe(data, max_pixels=settings.max_pixels, max_bytes=settings.max_file_bytes, verify=False)
        sc = holder.score([holder.preprocess(data, info.width, info.height)])[0]
        return jsonify(
            {
                "model_version": sc.version,
                "results": [{"label": sc.label, "confidence": sc.confidence, "scores": holder.acquisition_scores(sc)}],
            }
        )

    holder.start()
    serve(app, host=HOST, port=a.port, threads=16, ident="stand-in", _quiet=True)
    return 0


# -- main --------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", help="workspace to use (default: a temporary one, removed afterwards)")
    p.add_argument(
        "--model", choices=("auto", "real", "tiny"), default="auto", help="real: a trained --arch model (default when torch is there)"
    )
    p.add_argument("--arch", default=DEFAULT_ARCH, help=f"architecture of the real model (default {DEFAULT_ARCH})")
    p.add_argument(
        "--image-size", type=int, default=None, help="model input size (default: the architecture's, as `edge-al train` picks it)"
    )
    p.add_argument("--clients", default="1,2,4,8,16", help="comma-separated client counts (default 1,2,4,8,16)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)} (default all)")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per round of a setting (default 4)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per setting, modes in turn (default 3)")
    p.add_argument("--max-requests", type=int, default=20000, help="upper bound of requests per client per setting")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=16, help="server request threads (default 16)")
    p.add_argument("--stand-in", action="store_true", help="serve a minimal app around ModelHolder instead of `edge-al serve`")
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument(
        "--load",
        choices=("python", "wrk"),
        default="wrk" if shutil.which("wrk") else "python",
        help="load generator: wrk (apt-get install wrk; the default where present) or Python keep-alive threads",
    )
    args = p.parse_args(argv)
    args.client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.client_counts or min(args.client_counts) < 1 or max(args.client_counts) > 256:
        p.error("--clients must be integers in [1, 256]")
    if not args.mode_list or set(args.mode_list) - set(MODES) or "batch-1" not in args.mode_list:
        p.error(f"--modes must name some of {', '.join(MODES)}, batch-1 among them (the baseline)")
    if not 1 <= args.rounds <= 50:
        p.error("--rounds must be in [1, 50]")
    if not 0.5 <= args.seconds <= 600:
        p.error("--seconds must be in [0.5, 600]")
    return args


def measure(home: Path, args: argparse.Namespace, bodies: list[bytes], body_files: list[Path]) -> list[dict[str, Any]]:
    """Every mode's server at once, measured in turns: for each client count, ``--rounds`` rounds
    of each mode one after the other, so a change in the (shared) machine's background load hits
    every mode alike. One row per mode and client count: medians over the rounds, and the median
    of the per-round ratios to batch-1 (``ratio``)."""
    servers = {mode: Server(home, free_port(), mode, args) for mode in args.mode_list}
    rows = []
    try:
        ready = {mode: srv.wait_ready() for mode, srv in servers.items()}
        for srv in servers.values():
            drive(srv.port, bodies, min(4, max(args.client_counts)), 1.0, 200)  # warm-up
        for c in args.client_counts:
            runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in servers}
            for _ in range(args.rounds):
                for mode, srv in servers.items():
                    before = metrics_snapshot(srv.port)
                    if args.load == "wrk":
                        r = drive_wrk(srv.port, body_files, c, args.seconds, home)
                    else:
                        r = drive(srv.port, bodies, c, args.seconds, args.max_requests)
                    r["mean_batch"] = _mean_batch(before, metrics_snapshot(srv.port))
                    runs[mode].append(r)
            for mode, rs in runs.items():
                row = _aggregate(mode, c, rs, runs["batch-1"], ready[mode].get("model_version"))
                rows.append(row)
                mb = f"{row['mean_batch']:.2f}" if row["mean_batch"] else "-"
                print(f"  {mode:<9} clients {c:>3}: {row['req_s']:8.1f} req/s  p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
                      f"errors {row['errors']}  mean batch {mb}  / batch-1 {row['ratio']:.2f}x", flush=True)  # fmt: skip
    finally:
        for srv in servers.values():
            srv.stop()
    return rows


def _aggregate(mode: str, clients: int, rs: list[dict[str, Any]], base: list[dict[str, Any]], version: Any) -> dict[str, Any]:
    def med(key: str, runs: list[dict[str, Any]]) -> float:
        vals = [float(r[key]) for r in runs if r.get(key) is not None]
        return float(np.median(vals)) if vals else float("nan")

    ratios = [r["req_s"] / b["req_s"] for r, b in zip(rs, base, strict=True) if b["req_s"]]
    return {
        "mode": mode,
        "clients": clients,
        "rounds": len(rs),
        "req_s": med("req_s", rs),
        "p50_ms": med("p50_ms", rs),
        "p99_ms": med("p99_ms", rs),
        "mean_batch": med("mean_batch", rs) if any(r.get("mean_batch") for r in rs) else None,
        "errors": sum(int(r["errors"]) for r in rs),
        "ratio": float(np.median(ratios)) if ratios else float("inf"),
        "ratios": ratios,
        "model_version": version,
        "error_samples": [s for r in rs for s in r["error_samples"]][:3],
    }


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> tuple[bool, dict[str, dict[int, float]]]:
    """Print the table and the ratios to batch-1; returns (targets met, {mode: {clients: ratio}})."""
    print(f"\n{'clients':>7}  {'mode':<9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'mean batch':>10} {'/ batch-1':>9}")
    ratios: dict[str, dict[int, float]] = {}
    for r in sorted(rows, key=lambda r: (r["clients"], MODES.index(r["mode"]))):
        ratio = r["ratio"]
        ratios.setdefault(r["mode"], {})[r["clients"]] = ratio
        mb = f"{r['mean_batch']:.2f}" if r["mean_batch"] else "-"
        print(f"{r['clients']:>7}  {r['mode']:<9} {r['req_s']:>9.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['errors']:>6} "
              f"{mb:>10} {ratio:>8.2f}x")  # fmt: skip
    errors = sum(r["errors"] for r in rows)
    ok = errors == 0
    for mode, by_clients in ratios.items():
        if mode == "batch-1":
            continue
        low = min(by_clients.values())
        top = by_clients[max(by_clients)]
        met = low >= 1.0 and (max(by_clients) < 16 or top >= 1.3)
        ok = ok and (met or mode != "adaptive")
        print(f"{mode} / batch-1: lowest {low:.2f}x, at {max(by_clients)} clients {top:.2f}x "
              f"(targets >= 1.0x everywhere, >= 1.3x at 16) -> {'MET' if met else 'NOT MET'}")  # fmt: skip
    print(f"errors: {errors}")
    return ok, ratios


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--serve-stand-in" in argv:
        return serve_stand_in(argv)
    args = parse_args(argv)
    tmp = None if args.home else Path(tempfile.mkdtemp(prefix="edge-al-bench-"))
    home = Path(args.home).resolve() if args.home else tmp
    assert home is not None
    home.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    try:
        t0 = time.perf_counter()
        desc = prepare(home, args.model, args.image_size or Settings().image_size_for(args.arch), notes, arch=args.arch)
        print("\n".join([*notes, f"model: {desc} (workspace ready in {time.perf_counter() - t0:.0f} s)"]))
        body_files = sorted((home / "images").rglob("*.jpg"))[:32]
        bodies = [f.read_bytes() for f in body_files]
        if not bodies:
            raise SystemExit(f"no JPEGs under {home / 'images'} to send")
        precision = _precision(home)
        print(f"runtime: {precision}")
        print(f"payload: {len(bodies)} JPEGs, {np.mean([len(b) for b in bodies]) / 1024:.1f} KiB mean, 320x240; load: {args.load}")
        rows = measure(home, args, bodies, body_files)
        ok, ratios = report(rows, args)
        server = "stand-in (ModelHolder only)" if args.stand_in else "edge-al serve"
        print(f"host: {os.cpu_count()} CPUs, {_isa()}; {precision}; server: {server}; {desc}")
        if args.json:
            doc = {"model": desc, "runtime": precision, "isa": _isa(), "rows": rows, "ratios": ratios, "ok": ok}
            Path(args.json).write_text(json.dumps(doc, indent=2))
        return 0 if ok else 1
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _isa() -> str:
    """The CPU model and the ISA features that matter for OpenVINO (from /proc/cpuinfo, Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "cpu unknown"
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    return f"{model} ({' '.join(isa) or 'no AVX2'})"


if __name__ == "__main__":
    sys.exit(main())
