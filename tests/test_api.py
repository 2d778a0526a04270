"""Flask test-client tests of every route; every JSON body is validated against /v1/openapi.json."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_al.api.openapi import document
from edge_al.registry import Registry
from edge_al.store import Store
from tests.api_support import LABELS, build_workspace, check_response, png_header, running_app, template
from tests.helpers import publish_tiny

pytestmark = pytest.mark.stores


@pytest.fixture
def workspace(tmp_path: Path, db_url: str | None) -> tuple[Any, list[tuple[Path, str]]]:
    return build_workspace(tmp_path, n=30, db_url=db_url)


def _app(settings: Any, **config: Any) -> Iterator[Flask]:
    yield from running_app(settings, **config)


@pytest.fixture
def app(workspace: tuple[Any, Any]) -> Iterator[Flask]:
    yield from _app(workspace[0])


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _png(path: Path) -> bytes:
    return path.read_bytes()


def _jpeg(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


# -- the document itself ---------------------------------------------------------------------
def test_openapi_document_covers_every_route(app: Flask, client: FlaskClient) -> None:
    doc = check_response(client.get("/v1/openapi.json"), "/v1/openapi.json", "GET")
    assert doc["openapi"].startswith("3.1")
    for name, schema in doc["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema), name
    routes = {
        (template(r.rule), m.lower())
        for r in app.url_map.iter_rules()
        if r.rule.startswith(("/v1/", "/healthz", "/readyz", "/metrics"))
        for m in r.methods or ()
        if m not in {"HEAD", "OPTIONS"}
    }
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert routes == documented
    assert doc == document()


# -- score ---------------------------------------------------------------------------------------
def test_score_raw_and_multipart(client: FlaskClient, workspace: Any) -> None:
    _, pairs = workspace
    body = check_response(client.post("/v1/score?top_k=2", data=_png(pairs[0][0]), content_type="image/png"), "/v1/score", "POST")
    assert body["model_version"] == "v0001"
    (r,) = body["results"]
    assert r["label"] in LABELS and len(r["top_k"]) == 2 and r["top_k"][0]["label"] == r["label"]
    assert set(r["scores"]) >= {"entropy", "margin", "least_confidence", "fre", "knn"}
    files = {"a": (io.BytesIO(_png(pairs[1][0])), "one.png"), "b": (io.BytesIO(_jpeg()), "two.jpg")}
    body = check_response(client.post("/v1/score", data=files, content_type="multipart/form-data"), "/v1/score", "POST")
    assert [r["filename"] for r in body["results"]] == ["one.png", "two.jpg"]
    assert all(r["model_version"] == "v0001" and "sample_id" not in r for r in body["results"])


def test_score_store_adds_to_pool_deduplicated_and_queueable(client: FlaskClient, app: Flask) -> None:
    store = app.extensions["edge_al"].store
    before = store.count_samples()
    data = _jpeg(seed=7)
    r1 = check_response(client.post("/v1/score?store=true", data=data, content_type="image/jpeg"), "/v1/score", "POST")["results"][0]
    r2 = check_response(client.post("/v1/score?store=1", data=data, content_type="image/jpeg"), "/v1/score", "POST")["results"][0]
    assert r1["sample_id"] == r2["sample_id"] and r1["created"] and not r2["created"]
    assert store.count_samples() == before + 1
    assert store.prediction(r1["sample_id"], "v0001") is not None  # joins the queue without a rescore
    sample = check_response(client.get(f"/v1/samples/{r1['sample_id']}"), "/v1/samples/{sample_id}", "GET")
    assert sample["source"] == "score" and sample["prediction"]["label"] == r1["label"]


BAD_BODIES = [
    ("empty", b"", "image/jpeg", 400),
    ("random bytes", bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8)), "image/jpeg", 400),
    ("truncated jpeg", _jpeg(size=(256, 256))[:600], "image/jpeg", 400),
    ("text as image", b"hello world", "image/png", 400),
    ("wrong content type", _jpeg(), "text/plain", 415),
    ("no content type", _jpeg(), "", 415),
    ("json", b'{"a": 1}', "application/json", 415),
    ("huge declared png", png_header(100_000, 100_000), "image/png", 413),
    ("bomb-ish png", png_header(20_000, 20_000), "image/png", 413),
]


@pytest.mark.parametrize(("name", "data", "ctype", "status"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_score_bad_input(client: FlaskClient, name: str, data: bytes, ctype: str, status: int) -> None:
    resp = client.post("/v1/score", data=data, content_type=ctype or None)
    assert resp.status_code == status, resp.get_json()
    body = check_response(resp, "/v1/score", "POST")
    assert body["detail"]
    assert client.get("/healthz").status_code == 200  # keeps serving


def test_score_fuzzed_jpegs_never_500(client: FlaskClient) -> None:
    rng = np.random.default_rng(0)
    good = _jpeg(size=(96, 80))
    statuses = set()
    for _ in range(25):
        b = bytearray(good)
        for pos in rng.integers(2, len(b), int(rng.integers(1, 20))):
            b[int(pos)] = int(rng.integers(0, 256))
        if rng.random() < 0.4:
            b = b[: int(rng.integers(1, len(b)))]
        resp = client.post("/v1/score", data=bytes(b), content_type="image/jpeg")
        statuses.add(resp.status_code)
        check_response(resp, "/v1/score", "POST")
    assert statuses <= {200, 400, 413}


def test_score_limits(workspace: Any, tmp_path: Path) -> None:
    settings, pairs = workspace
    for app in _app(settings.with_(max_pixels=500), MAX_CONTENT_LENGTH=4096, MAX_IMAGES_PER_REQUEST=2):
        c = app.test_client()
        # 32x32 = 1024 pixels > 500: pixel limit, from the header, before decoding
        resp = c.post("/v1/score", data=_png(pairs[0][0]), content_type="image/png")
        assert resp.status_code == 413 and "pixels" in check_response(resp, "/v1/score", "POST")["detail"]
        resp = c.post("/v1/score", data=b"\xff\xd8" + b"\0" * 10_000, content_type="image/jpeg")
        assert resp.status_code == 413 and "bytes" in check_response(resp, "/v1/score", "POST")["detail"]
        files = {f"f{i}": (io.BytesIO(b"x"), f"{i}.png") for i in range(3)}
        resp = c.post("/v1/score", data=files, content_type="multipart/form-data")
        assert resp.status_code == 413 and "limit is 2" in check_response(resp, "/v1/score", "POST")["detail"]
        # every part is an image, file or plain field (the document's multipart schema): this one does not decode
        resp = c.post("/v1/score", data={"field": "value"}, content_type="multipart/form-data")
        assert resp.status_code == 400 and check_response(resp, "/v1/score", "POST")["errors"][0]["filename"] == "field"


def test_score_multipart_reports_each_bad_part(client: FlaskClient, workspace: Any) -> None:
    _, pairs = workspace
    files = {"a": (io.BytesIO(_png(pairs[0][0])), "ok.png"), "b": (io.BytesIO(b"junk"), "bad.png")}
    resp = client.post("/v1/score", data=files, content_type="multipart/form-data")
    body = check_response(resp, "/v1/score", "POST")
    assert resp.status_code == 400 and body["errors"] == [{"index": 1, "filename": "bad.png", "detail": body["errors"][0]["detail"]}]


def test_no_model_is_503(tmp_path: Path, db_url: str | None) -> None:
    settings, pairs = build_workspace(tmp_path, n=3, model=False, db_url=db_url)
    for app in _app(settings):
        c = app.test_client()
        resp = c.post("/v1/score", data=_png(pairs[0][0]), content_type="image/png")
        assert resp.status_code == 503 and resp.headers["Retry-After"]
        check_response(resp, "/v1/score", "POST")
        assert check_response(c.get("/readyz"), "/readyz", "GET")["status"] == 503
        assert c.get("/v1/queue").status_code == 503
        assert check_response(c.get("/healthz"), "/healthz", "GET") == {"status": "ok"}
        check_response(c.get("/v1/stats"), "/v1/stats", "GET")


def test_create_app_compiles_nothing(workspace: Any) -> None:
    for app in _app(workspace[0], START_MODEL="lazy"):
        holder = app.extensions["edge_al"].holder
        assert not holder.ready
        c = app.test_client()
        assert c.get("/healthz").status_code == 200 and not holder.ready
        assert check_response(c.get("/readyz"), "/readyz", "GET") == {"status": "ready", "model_version": "v0001"}


# -- samples -------------------------------------------------------------------------------------
def test_samples_upload_get_image(client: FlaskClient, workspace: Any) -> None:
    _, pairs = workspace
    jpeg = _jpeg(3, (200, 100))
    files = {"a": (io.BytesIO(jpeg), "new.jpg"), "b": (io.BytesIO(_png(pairs[0][0])), "dup.png")}
    resp = client.post("/v1/samples", data=files, content_type="multipart/form-data")
    assert resp.status_code == 201
    new, dup = check_response(resp, "/v1/samples", "POST")["samples"]
    assert new["created"] and not dup["created"]
    doc = check_response(client.get(f"/v1/samples/{new['id']}"), "/v1/samples/{sample_id}", "GET")
    assert (doc["width"], doc["height"], doc["annotation"], doc["prediction"]) == (200, 100, None, None)
    img = client.get(f"/v1/samples/{new['id']}/image")
    assert img.status_code == 200 and img.mimetype == "image/jpeg" and img.data == jpeg
    again = client.get(f"/v1/samples/{new['id']}/image", headers={"If-None-Match": img.headers["ETag"]})
    assert again.status_code == 304
    thumb = client.get(f"/v1/samples/{new['id']}/image?size=50")
    decoded = cv2.imdecode(np.frombuffer(thumb.data, np.uint8), cv2.IMREAD_COLOR)
    assert thumb.mimetype == "image/jpeg" and decoded.shape[:2] == (25, 50)
    png = client.get(f"/v1/samples/{dup['id']}/image")
    assert png.mimetype == "image/png"
    for url in ("/v1/samples/99999", "/v1/samples/99999/image"):
        resp = client.get(url)
        assert resp.status_code == 404 and resp.mimetype == "application/problem+json"
    assert check_response(client.get("/v1/samples/1/image?size=-3"), "/v1/samples/{sample_id}/image", "GET")["status"] == 422
    assert client.post("/v1/samples", data=b"junk", content_type="image/png").status_code == 400


# -- queue, annotations, undo --------------------------------------------------------------------
def test_queue_leases_are_exclusive_and_expire(app: Flask, client: FlaskClient) -> None:
    a = check_response(client.get("/v1/queue?n=5&annotator=alice"), "/v1/queue", "GET")
    b = check_response(client.get("/v1/queue?n=5&annotator=bob&strategy=entropy"), "/v1/queue", "GET")
    ids_a = {it["sample_id"] for it in a["items"]}
    ids_b = {it["sample_id"] for it in b["items"]}
    assert len(ids_a) == 5 and len(ids_b) == 5 and not ids_a & ids_b
    assert a["labels"] == LABELS and a["strategy"] == "hybrid" and b["strategy"] == "entropy"
    item = a["items"][0]
    assert item["predicted"] in LABELS and abs(sum(item["probs"].values()) - 1) < 1e-3
    assert item["lease_expires_at"] > time.time() + 500
    # asking again as alice renews her own leases: same samples
    again = check_response(client.get("/v1/queue?n=5&annotator=alice"), "/v1/queue", "GET")
    assert {it["sample_id"] for it in again["items"]} == ids_a
    # the end each item names is the stored one (what decides whether another annotator may take it)
    rows = app.extensions["edge_al"].store.query("SELECT sample_id, expires_at FROM leases WHERE holder = 'alice'")
    assert {int(r["sample_id"]): float(r["expires_at"]) for r in rows} == {it["sample_id"]: it["lease_expires_at"] for it in again["items"]}
    # a lease that expires returns its sample to the queue
    with app.extensions["edge_al"].store.tx() as conn:
        conn.execute("UPDATE leases SET expires_at = ? WHERE holder = 'alice'", (time.time() - 1,))
    c = check_response(client.get("/v1/queue?n=30&annotator=dave"), "/v1/queue", "GET")
    assert ids_a <= {it["sample_id"] for it in c["items"]}
    for bad in ("n=0", "n=abc", "n=100000", "strategy=nope", "annotator=a%00b"):
        resp = client.get(f"/v1/queue?{bad}")
        assert resp.status_code == 422 and bad.split("=")[0] in check_response(resp, "/v1/queue", "GET")["detail"]


def test_annotations_flow(app: Flask, client: FlaskClient) -> None:
    store: Store = app.extensions["edge_al"].store
    items = check_response(client.get("/v1/queue?n=3&annotator=alice"), "/v1/queue", "GET")["items"]
    s0, s1, s2 = (it["sample_id"] for it in items)
    body = {
        "annotations": [
            {"sample_id": s0, "action": "accept", "annotator": "alice"},
            {"sample_id": s1, "action": "correct", "label": "d3", "annotator": "alice"},
            {"sample_id": s2, "action": "reject", "annotator": "alice"},
        ]
    }
    doc = check_response(client.post("/v1/annotations", json=body), "/v1/annotations", "POST")
    assert (doc["written"], doc["unchanged"], doc["retrain_after"]) == (3, 0, 12)
    assert doc["annotations_since_model"] == 3 and doc["retrain_job"] is None
    cur = store.current_annotations()
    assert cur[s0].label == items[0]["predicted"] and cur[s1].label == "d3" and cur[s2].action == "reject"
    # idempotent per sample and annotator; a bare list works too
    doc = check_response(client.post("/v1/annotations", json=body["annotations"]), "/v1/annotations", "POST")
    assert (doc["written"], doc["unchanged"]) == (0, 3)
    # annotated samples leave the queue
    nxt = check_response(client.get("/v1/queue?n=30&annotator=bob"), "/v1/queue", "GET")["items"]
    assert not {s0, s1, s2} & {it["sample_id"] for it in nxt}
    # undo puts it back
    undo = check_response(client.post("/v1/annotations/undo", json={"sample_id": s1, "annotator": "alice"}), "/v1/annotations/undo", "POST")
    assert undo["undone"] is True and s1 not in store.current_annotations()
    undo = check_response(client.post("/v1/annotations/undo", json={"sample_id": s1, "annotator": "alice"}), "/v1/annotations/undo", "POST")
    assert undo["undone"] is False
    stats = check_response(client.get("/v1/stats"), "/v1/stats", "GET")
    assert stats["labeled"] == 1 and stats["rejected"] == 1 and stats["labeled_per_class"] == {items[0]["predicted"]: 1}


def test_annotations_invalid_items_are_422_and_valid_ones_committed(app: Flask, client: FlaskClient) -> None:
    store: Store = app.extensions["edge_al"].store
    body = [
        {"sample_id": 1, "action": "correct", "label": "d1"},
        {"sample_id": 99999, "action": "reject"},
        {"sample_id": 2, "action": "correct", "label": "no-such-label"},
        {"sample_id": 3, "action": "destroy", "label": "d1"},
        {"sample_id": "x", "action": "reject"},
        {"sample_id": 4, "action": "correct"},
        "not an object",
        {"sample_id": 5, "action": "reject", "colour": "red"},
        {"sample_id": 6, "action": "correct", "label": 7},
        {"sample_id": 7, "action": "reject"},
    ]
    resp = client.post("/v1/annotations", json=body)
    doc = check_response(resp, "/v1/annotations", "POST")
    assert resp.status_code == 422 and doc["written"] == 2
    assert [e["index"] for e in doc["errors"]] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert "Unknown label" in doc["errors"][1]["detail"] and "does not exist" in doc["errors"][0]["detail"]
    assert set(store.current_annotations()) == {1, 7}
    for payload, ctype, status in [
        (b"{not json", "application/json", 422),
        (b'{"a": 1}', "application/json", 422),
        (b"sample_id=1", "application/x-www-form-urlencoded", 415),
        (b"[1, 2]", "text/plain", 415),
    ]:
        resp = client.post("/v1/annotations", data=payload, content_type=ctype)
        assert resp.status_code == status and check_response(resp, "/v1/annotations", "POST")["detail"]
    for payload in ({"sample_id": 99999}, {"sample_id": "1"}, [1], {"sample_id": 1, "annotator": 5}):
        resp = client.post("/v1/annotations/undo", json=payload)
        assert resp.status_code == 422 and check_response(resp, "/v1/annotations/undo", "POST")["detail"]


def test_annotations_queue_a_retrain_after_threshold(workspace: Any) -> None:
    for app in _app(workspace[0], RETRAIN_AFTER=3):
        c = app.test_client()
        doc = check_response(c.post("/v1/annotations", json=[{"sample_id": i, "action": "correct", "label": "d1"} for i in (1, 2)]),
                             "/v1/annotations", "POST")  # fmt: skip
        assert doc["retrain_job"] is None and doc["retrain_after"] == 3
        doc = check_response(c.post("/v1/annotations", json=[{"sample_id": 3, "action": "reject"}]), "/v1/annotations", "POST")
        job = doc["retrain_job"]
        assert job["kind"] == "retrain" and job["state"] == "queued"
        doc = check_response(c.post("/v1/annotations", json=[{"sample_id": i, "action": "reject"} for i in (4, 5, 6)]),
                             "/v1/annotations", "POST")  # fmt: skip
        assert doc["retrain_job"]["id"] == job["id"]  # at most one at a time
        stats = check_response(c.get("/v1/stats"), "/v1/stats", "GET")
        assert stats["retrain_job"]["id"] == job["id"]


# -- labels, jobs, models, stats, health ---------------------------------------------------------
def test_labels(client: FlaskClient) -> None:
    assert check_response(client.get("/v1/labels"), "/v1/labels", "GET")["labels"] == LABELS
    resp = client.post("/v1/labels", json={"name": "scratch"})
    assert resp.status_code == 201 and check_response(resp, "/v1/labels", "POST")["labels"][-1] == "scratch"
    resp = client.post("/v1/labels", json={"name": "scratch"})
    assert resp.status_code == 200 and check_response(resp, "/v1/labels", "POST")["created"] is False
    for bad in ({"name": ""}, {"name": "a\nb"}, {"nom": "x"}, ["x"], {"name": 3}):
        resp = client.post("/v1/labels", json=bad)
        assert resp.status_code == 422 and check_response(resp, "/v1/labels", "POST")["detail"]


def test_jobs_routes(client: FlaskClient) -> None:
    resp = client.post("/v1/jobs", json={"kind": "score", "params": {"batch": 4}})
    assert resp.status_code == 202
    job = check_response(resp, "/v1/jobs", "POST")
    assert job["state"] == "queued" and job["kind"] == "score"
    assert check_response(client.get(f"/v1/jobs/{job['id']}"), "/v1/jobs/{job_id}", "GET")["id"] == job["id"]
    assert [j["id"] for j in check_response(client.get("/v1/jobs?limit=5"), "/v1/jobs", "GET")["jobs"]] == [job["id"]]
    cancelled = check_response(client.post(f"/v1/jobs/{job['id']}/cancel"), "/v1/jobs/{job_id}/cancel", "POST")
    assert cancelled["state"] == "cancelled"
    resp = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 409 and check_response(resp, "/v1/jobs/{job_id}/cancel", "POST")
    retrain = client.post("/v1/jobs", json={"kind": "retrain"})
    assert retrain.status_code == 202
    resp = client.post("/v1/jobs", json={"kind": "retrain"})
    assert resp.status_code == 409 and check_response(resp, "/v1/jobs", "POST")["detail"]
    for bad in ({"kind": "train"}, {"kind": "score", "params": []}, {"kind": "score", "params": {"bogus": 1}}, []):
        resp = client.post("/v1/jobs", json=bad)
        assert resp.status_code == 422 and check_response(resp, "/v1/jobs", "POST")
    for url in ("/v1/jobs/9999", "/v1/jobs/abc"):
        resp = client.get(url)
        assert resp.status_code == 404 and check_response(resp, "/v1/jobs/{job_id}", "GET")
    assert client.get("/v1/jobs?limit=0").status_code == 422


def test_models_promote_rollback_swap_and_rescore(app: Flask, client: FlaskClient, workspace: Any) -> None:
    settings, pairs = workspace
    registry = Registry(settings.registry_dir)
    publish_tiny(registry, LABELS, seed=1, promote=False)
    models = check_response(client.get("/v1/models"), "/v1/models", "GET")
    assert models["active"] == "v0001" and [v["version"] for v in models["versions"]] == ["v0001", "v0002"]
    doc = check_response(client.post("/v1/models/v0002/promote"), "/v1/models/{version}/promote", "POST")
    assert doc["active"] == doc["serving"] == "v0002" and doc["reloaded"] is True
    assert doc["rescore_job"]["kind"] == "score"
    scored = check_response(client.post("/v1/score", data=_png(pairs[0][0]), content_type="image/png"), "/v1/score", "POST")
    assert scored["model_version"] == "v0002" and scored["results"][0]["model_version"] == "v0002"
    doc = check_response(client.post("/v1/models/rollback"), "/v1/models/rollback", "POST")
    assert doc["active"] == doc["serving"] == "v0001"
    resp = client.post("/v1/models/rollback")
    assert resp.status_code == 409 and check_response(resp, "/v1/models/rollback", "POST")
    resp = client.post("/v1/models/v0042/promote")
    assert resp.status_code == 404 and check_response(resp, "/v1/models/{version}/promote", "POST")
    resp = client.post("/v1/models/latest/promote")
    assert resp.status_code == 422 and check_response(resp, "/v1/models/{version}/promote", "POST")
    stats = check_response(client.get("/v1/stats"), "/v1/stats", "GET")
    assert [m["version"] for m in stats["models"]] == ["v0001", "v0002"]
    assert all(m["num_train_labels"] == 0 for m in stats["models"])


def test_health_ready_metrics(client: FlaskClient, workspace: Any) -> None:
    _, pairs = workspace
    assert check_response(client.get("/healthz"), "/healthz", "GET") == {"status": "ok"}
    assert check_response(client.get("/readyz"), "/readyz", "GET") == {"status": "ready", "model_version": "v0001"}
    client.post("/v1/score", data=_png(pairs[0][0]), content_type="image/png")
    client.get("/v1/samples/1")
    client.get("/v1/samples/2")
    client.get("/no/such/path")
    text = client.get("/metrics").data.decode()
    assert 'edge_al_http_requests_total{method="GET",route="/v1/samples/<int:sample_id>",status="200"} 2.0' in text
    assert 'route="<unmatched>"' in text and "/no/such/path" not in text
    for name in (
        "edge_al_http_request_duration_seconds_bucket",
        "edge_al_inference_seconds_count 1.0",
        "edge_al_pool_size 30.0",
        "edge_al_labeled 0.0",
        'edge_al_active_model_info{version="v0001"} 1.0',
        "edge_al_dispatch_queue_depth",
        "edge_al_dispatch_batch_sizes_total",
        'edge_al_jobs{state="queued"}',
    ):
        assert name in text, name


def test_errors_are_problem_json_without_traceback(app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    resp = client.delete("/v1/score")
    assert resp.status_code == 405 and "POST" in resp.headers["Allow"] and resp.mimetype == "application/problem+json"
    resp = client.get("/v1/nothing")
    assert resp.status_code == 404 and resp.get_json()["instance"] == "/v1/nothing"

    import edge_al.api.queue as queue_mod

    def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("secret internal state /etc/passwd")

    monkeypatch.setattr(queue_mod, "select_next", boom)
    resp = client.get("/v1/queue")
    body = check_response(resp, "/v1/queue", "GET")
    assert resp.status_code == 500 and "secret" not in resp.get_data(as_text=True) and "Traceback" not in resp.get_data(as_text=True)
    assert body["title"] == "Internal Server Error"
    assert client.get("/healthz").status_code == 200


def test_promoting_a_broken_version_changes_nothing(client: FlaskClient, workspace: Any) -> None:
    settings, pairs = workspace
    registry = Registry(settings.registry_dir)
    staging = registry.staging()
    (staging / "model.xml").write_text("<not a model/>")
    registry.publish(staging, {"labels": LABELS, "embedding_dim": 16})
    good = publish_tiny(registry, LABELS, seed=3, promote=False)  # v0003, its weights cut in half below
    weights = good.path / "model.bin"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for version in ("v0002", "v0003"):
        resp = client.post(f"/v1/models/{version}/promote")
        body = check_response(resp, "/v1/models/{version}/promote", "POST")
        assert resp.status_code == 409 and body["type"].endswith("model-load-failed"), body
        assert f"{version} cannot be loaded" in body["detail"] and "v0001 stays active" in body["detail"]
        assert str(settings.registry_dir) not in body["detail"] and str(settings.home) not in body["detail"]
        assert registry.active_version() == "v0001"
        models = check_response(client.get("/v1/models"), "/v1/models", "GET")
        assert (models["active"], models["serving"]) == ("v0001", "v0001")
    scored = check_response(client.post("/v1/score", data=_png(pairs[0][0]), content_type="image/png"), "/v1/score", "POST")
    assert scored["model_version"] == "v0001"
    assert client.post("/v1/models/rollback").status_code == 409  # the broken ones never became active
