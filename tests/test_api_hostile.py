"""Hostile and clumsy requests through the Flask test client: each gets a precise 4xx problem, never a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_al.api._util import MAX_BOUNDARY
from tests.api_support import build_workspace, check_response, running_app

pytestmark = pytest.mark.stores

BIG = "9" * 30
ID_MAX = 2**63 - 1


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, module_db_url: str | None) -> Iterator[Flask]:
    settings, _ = build_workspace(tmp_path_factory.mktemp("hostile"), n=8, db_url=module_db_url)
    yield from running_app(settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _json(value: Any) -> str:
    return json.dumps(value)


# (name, method, path, documented path, body, content type, status, words the detail must hold)
CASES: list[tuple[str, str, str, str, str | bytes | None, str | None, int, tuple[str, ...]]] = [
    ("sample id past int64", "GET", "/v1/samples/9223372036854775808", "/v1/samples/{sample_id}", None, None, 422,
     ("sample_id", "9223372036854775807", "9223372036854775808")),
    ("sample id of 30 digits, image", "GET", f"/v1/samples/{BIG}/image", "/v1/samples/{sample_id}/image", None, None, 422,
     ("sample_id",)),
    ("sample id 0", "GET", "/v1/samples/0", "/v1/samples/{sample_id}", None, None, 422, ("sample_id", "greater than or equal to 1")),
    ("job id of 30 digits", "GET", f"/v1/jobs/{BIG}", "/v1/jobs/{job_id}", None, None, 422, ("job_id",)),
    ("job id of 30 digits, cancel", "POST", f"/v1/jobs/{BIG}/cancel", "/v1/jobs/{job_id}/cancel", None, None, 422, ("job_id",)),
    ("annotation sample_id 10**30", "POST", "/v1/annotations", "/v1/annotations",
     _json({"sample_id": 10**30, "action": "accept"}), "application/json", 422, ("sample_id", "less than or equal")),
    ("annotation sample_id 0", "POST", "/v1/annotations", "/v1/annotations",
     _json({"sample_id": 0, "action": "accept"}), "application/json", 422, ("sample_id", "greater than or equal to 1")),
    ("undo sample_id 10**30", "POST", "/v1/annotations/undo", "/v1/annotations/undo",
     _json({"sample_id": 10**30}), "application/json", 422, ("sample_id",)),
    ("undo sample_id past int64", "POST", "/v1/annotations/undo", "/v1/annotations/undo",
     _json({"sample_id": ID_MAX + 1}), "application/json", 422, ("sample_id",)),
    ("JSON nested 100,000 deep", "POST", "/v1/annotations", "/v1/annotations",
     "[" * 100_000 + "]" * 100_000, "application/json", 422, ("nested",)),
    ("JSON nested 40 deep (parses, over the limit)", "POST", "/v1/labels", "/v1/labels",
     '{"name": ' + "[" * 40 + "]" * 40 + "}", "application/json", 422, ("nested",)),
    ("integer literal of 5,000 digits", "POST", "/v1/labels", "/v1/labels",
     '{"name": ' + "1" * 5000 + "}", "application/json", 422, ("4,300 digits",)),
    ("integer of 5,000 digits as sample_id", "POST", "/v1/annotations/undo", "/v1/annotations/undo",
     '{"sample_id": ' + "7" * 5000 + "}", "application/json", 422, ("4,300 digits",)),
    ("unpaired surrogate in a label name", "POST", "/v1/labels", "/v1/labels",
     '{"name": "\\ud800"}', "application/json", 422, ("surrogate", "$.name")),
    ("unpaired surrogate in an annotation label", "POST", "/v1/annotations", "/v1/annotations",
     '{"annotations": [{"sample_id": 1, "action": "correct", "label": "a\\udfff"}]}', "application/json", 422, ("surrogate",)),
    ("unpaired surrogate in a property name", "POST", "/v1/labels", "/v1/labels",
     '{"\\ud800": "x", "name": "y"}', "application/json", 422, ("surrogate",)),
    ("body not UTF-8", "POST", "/v1/labels", "/v1/labels", b'{"name": "\xff\xfe"}', "application/json", 422, ("UTF-8",)),
    ("annotations beside an extra member", "POST", "/v1/annotations", "/v1/annotations",
     _json({"annotations": [], "colour": 1}), "application/json", 422, ("colour",)),
    ("an item by an unknown path", "POST", "/v1/annotations", "/v1/annotations",
     _json({"path": "nowhere.png", "action": "reject"}), "application/json", 422, ("nowhere.png",)),
    ("an item by a path of a superscript digit", "POST", "/v1/annotations", "/v1/annotations",
     _json({"path": "\u00b3", "action": "reject"}), "application/json", 422, ("\u00b3",)),
    ("an item naming neither sample_id nor path", "POST", "/v1/annotations", "/v1/annotations",
     _json({"action": "reject"}), "application/json", 422, ("neither",)),
    ("extra property", "POST", "/v1/labels", "/v1/labels", _json({"name": "x", "colour": 1}), "application/json", 422, ("colour",)),
    ("label name too long", "POST", "/v1/labels", "/v1/labels", _json({"name": "x" * 129}), "application/json", 422, ("name", "128")),
    ("string id in undo", "POST", "/v1/annotations/undo", "/v1/annotations/undo", _json({"sample_id": "1"}), "application/json", 422,
     ("sample_id",)),
    ("boolean id in undo", "POST", "/v1/annotations/undo", "/v1/annotations/undo", _json({"sample_id": True}), "application/json", 422,
     ("sample_id",)),
    ("queue n over 200", "GET", "/v1/queue?n=201", "/v1/queue", None, None, 422, ("'n'", "200")),
    ("queue n of 30 digits", "GET", f"/v1/queue?n={BIG}", "/v1/queue", None, None, 422, ("'n'",)),
    ("jobs limit 0", "GET", "/v1/jobs?limit=0", "/v1/jobs", None, None, 422, ("'limit'",)),
    ("thumbnail size past int64", "GET", f"/v1/samples/1/image?size={BIG}", "/v1/samples/{sample_id}/image", None, None, 422,
     ("'size'",)),
    ("top_k of 30 digits", "POST", f"/v1/score?top_k={BIG}", "/v1/score", b"x", "image/png", 422, ("top_k",)),
    ("GIF body", "POST", "/v1/score", "/v1/score", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image/gif", 400, ("format",)),
    ("job kind unknown", "POST", "/v1/jobs", "/v1/jobs", _json({"kind": "mine"}), "application/json", 422, ("kind",)),
    ("JSON body as text/plain", "POST", "/v1/labels", "/v1/labels", _json({"name": "x"}), "text/plain", 415, ("application/json",)),
    ("empty JSON body", "POST", "/v1/labels", "/v1/labels", b"", "application/json", 422, ("JSON",)),
    ("JSON null body", "POST", "/v1/jobs", "/v1/jobs", b"null", "application/json", 422, ()),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_request_gets_a_precise_4xx_problem(client: FlaskClient, case: tuple[Any, ...]) -> None:
    _, method, path, documented, body, ctype, status, words = case
    resp = client.open(path, method=method, data=body, content_type=ctype)
    assert resp.status_code == status, resp.get_data(as_text=True)[:300]
    doc = check_response(resp, documented, method)
    for word in words:
        assert word in doc["detail"], (word, doc["detail"])


def test_missing_blob_404_names_no_server_path(app: Flask, client: FlaskClient) -> None:
    store = app.extensions["edge_al"].store
    sample = store.sample(1)
    Path(sample.path).unlink()
    resp = client.get("/v1/samples/1/image")
    doc = check_response(resp, "/v1/samples/{sample_id}/image", "GET")
    assert resp.status_code == 404 and "sample 1" in doc["detail"]
    text = resp.get_data(as_text=True)
    assert str(Path(sample.path).parent) not in text and Path(sample.path).name not in text and "/" not in doc["detail"]


def test_a_multipart_boundary_past_70_characters_is_accepted(client: FlaskClient) -> None:
    """Werkzeug's own client makes boundaries past RFC 2046's 70 characters now and then (time() and
    random() in it): such an upload must not fail at random. Past MAX_BOUNDARY it is refused."""
    png = _png_bytes()
    for size, status in ((75, 201), (MAX_BOUNDARY + 1, 400)):
        boundary = "b" * size
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="a"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
        body = head.encode() + png + f"\r\n--{boundary}--\r\n".encode()
        resp = client.post("/v1/samples", data=body, content_type=f"multipart/form-data; boundary={boundary}")
        assert resp.status_code == status, resp.get_json()


def _png_bytes() -> bytes:
    import cv2
    import numpy as np

    ok, buf = cv2.imencode(".png", np.random.default_rng(7).integers(0, 255, (24, 24, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()
