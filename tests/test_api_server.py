"""The real server (``edge-al serve`` under waitress) as a subprocess on a free 127.0.0.1 port.

score -> queue -> annotate -> a job runs -> a new version is served -> the pool is rescored;
threads scoring while a model is promoted; kill -9 during annotation traffic loses nothing acknowledged.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_al.api.auth import create_key
from edge_al.config import Settings
from edge_al.registry import Registry
from edge_al.store import open_store
from export.tools.machine import free_port
from tests.api_support import LABELS, build_workspace
from tests.helpers import publish_tiny

pytestmark = pytest.mark.stores

ROOT = Path(__file__).resolve().parents[1]
PEOPLE = ("alice", "bob", "carol", "dave")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str
    settings: Settings
    keys: dict[str, str]
    labels_by_path: dict[str, str]
    log: Path

    def call(self, method: str, path: str, *, role: str = "admin", data: bytes | None = None, json_body: Any = None,
             content_type: str | None = None, timeout: float = 30.0) -> Reply:  # fmt: skip
        headers = {"Authorization": f"Bearer {self.keys[role]}"}
        if json_body is not None:
            data = json.dumps(json_body).encode()
            content_type = "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw, status, hdrs = resp.read(), resp.status, dict(resp.headers)
        except urllib.error.HTTPError as exc:
            raw, status, hdrs = exc.read(), exc.code, dict(exc.headers)
        ctype = hdrs.get("Content-Type", "")
        return Reply(status, hdrs, json.loads(raw) if "json" in ctype else raw)

    def wait_job(self, job_id: int, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job: dict[str, Any] = self.call("GET", f"/v1/jobs/{job_id}").body
            if job["state"] in {"succeeded", "failed", "cancelled"}:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not finish: {job}\n{self.log.read_text()[-3000:]}")


def _start(
    root: Path,
    *,
    score: bool,
    with_worker: bool,
    n: int = 40,
    env: dict[str, str] | None = None,
    db_url: str | None = None,
    wsgi: str = "waitress",
) -> Server:
    """``edge-al serve`` on a new workspace; its store on ``db_url`` (``EDGE_AL_DB``) when given.
    ``wsgi="gunicorn"``: the README's gunicorn command instead (one gthread worker, no job worker)."""
    settings, pairs = build_workspace(root, n=n, score=score, db_url=db_url)
    env = {**(env or {}), **({"EDGE_AL_DB": db_url} if db_url else {})}
    store = open_store(settings)
    keys = {role: create_key(store, role, f"{role}-test")[1] for role in ("scorer", "annotator", "admin")}
    keys.update({who: create_key(store, "annotator", who)[1] for who in PEOPLE})  # one key per person
    store.close()
    port = free_port()
    log = root / "server.log"
    cmd = [sys.executable, "-m", "edge_al", "--home", str(settings.home), "serve", "--port", str(port), "--threads", "8"]
    if wsgi == "gunicorn":
        assert not with_worker, "gunicorn runs the API only (the README starts `edge-al worker` beside it)"
        cmd = [sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", "8", "--bind", f"127.0.0.1:{port}", "--timeout", "120",
               "edge_al.api:create_app()"]  # fmt: skip
        env["EDGE_AL_HOME"] = str(settings.home)
    elif with_worker:
        cmd.append("--with-worker")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", settings, keys, {str(p.resolve()): lab for p, lab in pairs}, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError):
            if server.call("GET", "/readyz", timeout=2).status == 200:
                return server
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the server did not become ready:\n{log.read_text()}")


def _stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_db_url: str | None) -> Iterator[Server]:
    srv = _start(tmp_path_factory.mktemp("server"), score=False, with_worker=True, db_url=module_db_url)
    yield srv
    _stop(srv)
    assert srv.proc.returncode == 0, srv.log.read_text()[-3000:]


def _png(server: Server, i: int = 0) -> bytes:
    return Path(sorted(server.labels_by_path)[i]).read_bytes()


def _annotate_from_queue(server: Server, n: int, annotator: str) -> list[int]:
    queue = server.call("GET", f"/v1/queue?n={n}", role=annotator)
    assert queue.status == 200 and queue.body["holder"] == annotator, queue.body
    store = open_store(server.settings)
    try:
        items = [{"sample_id": it["sample_id"], "action": "correct", "annotator": annotator,
                  "label": server.labels_by_path[store.sample(it["sample_id"]).path]} for it in queue.body["items"]]  # fmt: skip
    finally:
        store.close()
    reply = server.call("POST", "/v1/annotations", role=annotator, json_body={"annotations": items})
    assert reply.status == 200 and reply.body["written"] == len(items), reply.body
    return [it["sample_id"] for it in items]


def test_score_queue_annotate_job_promote_rescore(server: Server) -> None:
    # the line scores and feeds the pool
    r = server.call("POST", "/v1/score?store=true", role="scorer", data=_png(server, 0), content_type="image/png")
    assert r.status == 200 and r.body["model_version"] == "v0001" and r.body["results"][0]["sample_id"] >= 1
    assert server.call("GET", "/v1/models", role="scorer").status == 403
    # a score job runs on the in-process worker
    job = server.call("POST", "/v1/jobs", json_body={"kind": "score"})
    assert job.status == 202
    done = server.wait_job(job.body["id"])
    assert done["state"] == "succeeded", done
    # queue -> annotate (two annotators never share a sample)
    a = _annotate_from_queue(server, 5, "alice")
    b = _annotate_from_queue(server, 5, "bob")
    assert len(set(a) | set(b)) == 10
    stats = server.call("GET", "/v1/stats", role="annotator").body
    assert stats["labeled"] == 10 and stats["pool_size"] == 40
    # a new version: promoted over the API, served at once, and the pool rescored in the background
    registry = Registry(server.settings.registry_dir)
    publish_tiny(registry, LABELS, seed=1, promote=False)
    promoted = server.call("POST", "/v1/models/v0002/promote")
    assert promoted.status == 200 and promoted.body["active"] == promoted.body["serving"] == "v0002"
    r = server.call("POST", "/v1/score", role="scorer", data=_png(server, 1), content_type="image/png")
    assert r.body["model_version"] == "v0002" and r.body["results"][0]["model_version"] == "v0002"
    rescore = server.wait_job(promoted.body["rescore_job"]["id"])
    assert rescore["state"] == "succeeded", rescore
    store = open_store(server.settings)
    try:
        assert set(store.scored_ids("v0002").tolist()) == set(store.sample_ids().tolist())
    finally:
        store.close()
    queue = server.call("GET", "/v1/queue?n=3", role="annotator").body
    assert queue["model_version"] == "v0002"
    stats = server.call("GET", "/v1/stats", role="annotator").body
    assert [m["version"] for m in stats["models"]] == ["v0001", "v0002"] and stats["serving"] == "v0002"
    metrics = urllib.request.urlopen(server.base + "/metrics", timeout=10).read().decode()
    assert 'edge_al_active_model_info{version="v0002"} 1.0' in metrics


def test_identity_leases_and_undo_belong_to_the_key(server: Server) -> None:
    bobs = server.call("GET", "/v1/queue?n=2", role="bob").body["items"]
    # carol names bob: she gets her own leases, never his
    carols = server.call("GET", "/v1/queue?n=4&annotator=bob", role="carol").body
    assert carols["holder"] == "carol" and not {it["sample_id"] for it in bobs} & {it["sample_id"] for it in carols["items"]}
    taken = server.call("POST", "/v1/annotations", role="carol", json_body=[{"sample_id": bobs[0]["sample_id"], "action": "reject"}])
    assert taken.status == 409 and taken.body["errors"][0]["status"] == 409
    mine = carols["items"][0]["sample_id"]
    ok = server.call("POST", "/v1/annotations", role="carol", json_body=[{"sample_id": mine, "action": "reject", "annotator": "bob"}])
    assert ok.status == 200 and ok.body["written"] == 1
    assert server.call("POST", "/v1/annotations/undo", role="bob", json_body={"sample_id": mine}).status == 403
    assert server.call("POST", "/v1/annotations/undo", role="carol", json_body={"sample_id": mine}).body["undone"] is True
    again = server.call("POST", "/v1/annotations", role="carol", json_body=[{"sample_id": mine, "action": "reject"}])
    assert again.status == 200 and (again.body["written"], again.body["unchanged"]) == (1, 0)
    store = open_store(server.settings)
    try:
        assert store.current_annotations()[mine].annotator == "carol"
    finally:
        store.close()


def test_threads_scoring_while_a_model_is_promoted(server: Server) -> None:
    registry = Registry(server.settings.registry_dir)
    active = registry.active_version()
    new = publish_tiny(registry, LABELS, seed=2, promote=False).version
    results: list[tuple[float, float, int, str | None]] = []
    errors: list[str] = []
    stop = threading.Event()
    data = [_png(server, i) for i in range(8)]

    def worker(k: int) -> None:
        i = 0
        while not stop.is_set() or i < 10:
            t0 = time.monotonic()
            try:
                r = server.call("POST", "/v1/score", role="scorer", data=data[(k + i) % len(data)], content_type="image/png")
                results.append((t0, time.monotonic(), r.status, r.body.get("model_version") if isinstance(r.body, dict) else None))
            except Exception as exc:  # collected and asserted below
                errors.append(repr(exc))
            i += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    promoted = server.call("POST", f"/v1/models/{new}/promote")
    promoted_at = time.monotonic()
    time.sleep(0.5)
    back_sent = time.monotonic()
    back = server.call("POST", f"/v1/models/{active}/promote")
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(60)
    assert promoted.status == 200 and back.status == 200
    assert not errors and results and all(status == 200 for _, _, status, _ in results), (errors, results[:5])
    versions = {v for _, _, _, v in results}
    assert versions <= {active, new} and new in versions
    # a request sent after the promote returned and answered before the next one began ran on the new model
    between = [v for t0, t1, _, v in results if promoted_at < t0 and t1 < back_sent]
    assert between and set(between) == {new}
    server.wait_job(back.body["rescore_job"]["id"])


def test_kill9_during_annotation_traffic_loses_nothing_acknowledged(tmp_path: Path, db_url: str | None) -> None:
    srv = _start(tmp_path, score=True, with_worker=False, n=60, db_url=db_url)
    acked: dict[int, str] = {}
    done = threading.Event()

    def traffic() -> None:
        for sid in range(1, 61):
            label = LABELS[sid % 10]
            try:
                r = srv.call("POST", "/v1/annotations", role="annotator", timeout=5,
                             json_body=[{"sample_id": sid, "action": "correct", "label": label, "annotator": "k9"}])  # fmt: skip
            except (OSError, http.client.HTTPException):  # the kill can land mid-response (IncompleteRead)
                break
            if r.status == 200:
                acked[sid] = label
        done.set()

    t = threading.Thread(target=traffic)
    t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 15 and time.monotonic() < deadline:
        time.sleep(0.005)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    t.join(30)
    assert done.is_set() and len(acked) >= 15
    store = open_store(srv.settings)
    try:
        current = store.current_annotations()
    finally:
        store.close()
    lost = {sid: lab for sid, lab in acked.items() if sid not in current or current[sid].label != lab}
    assert not lost, f"acknowledged but lost after kill -9: {lost}"
    assert len(acked) < 60, "the kill came after all traffic; nothing was tested"


def _export_available() -> bool:
    """Without importing torch here (the import-hygiene tests share this process)."""
    return importlib.util.find_spec("torch") is not None and (ROOT / "export" / "workflow.py").exists()


@pytest.mark.slow
@pytest.mark.skipif(not _export_available(), reason="needs edge-al[train] (export.workflow, torch)")
def test_a_real_retrain_job_is_served_and_rescored(tmp_path: Path, db_url: str | None) -> None:
    # the automatic retrain (after 12 annotations) would train with the default, slower options: submit our own
    srv = _start(tmp_path, score=True, with_worker=True, n=80, env={"EDGE_AL_RETRAIN_AFTER": "100000"}, db_url=db_url)
    try:
        for who in ("alice", "bob", "carol", "dave"):
            _annotate_from_queue(srv, 15, who)
        # a 2-epoch model's near-tied outputs fail the INT8 gates; NNCF's accuracy control would spend a minute
        # retrying them (tests/test_export.py covers it): this test is about the job, the swap and the rescore
        params = {"train_options": {"arch": "mobilenet_v3_small", "epochs": 2, "image_size": 32, "batch_size": 16}, "tolerance": 1.0,
                  "export_options": {"accuracy_control": False, "calibration_size": 32}}  # fmt: skip
        job = srv.call("POST", "/v1/jobs", json_body={"kind": "retrain", "params": params})
        assert job.status == 202, job.body
        done = srv.wait_job(job.body["id"], timeout=600)
        assert done["state"] == "succeeded", done
        new = done["result"]["version"]
        assert done["result"]["promoted"] is True
        # the job record turns "succeeded" just before the worker's model-change hook swaps the scorer
        deadline = time.monotonic() + 60
        while srv.call("GET", "/v1/models").body["serving"] != new and time.monotonic() < deadline:
            time.sleep(0.2)
        r = srv.call("POST", "/v1/score", role="scorer", data=_png(srv, 0), content_type="image/png")
        assert r.body["model_version"] == new
        store = open_store(srv.settings)
        try:
            assert set(store.scored_ids(new).tolist()) == set(store.sample_ids().tolist())
        finally:
            store.close()
        stats = srv.call("GET", "/v1/stats", role="annotator").body
        assert [m["num_train_labels"] for m in stats["models"]][-1] > 0
    finally:
        _stop(srv)
