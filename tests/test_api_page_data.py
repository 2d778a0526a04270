"""What the annotation page needs from the API to help the expert decide (issue 13): why each queue
item was picked, labeled examples of a class to compare against, and which versions were promoted
(the learning curve plots those). Every body is validated against the OpenAPI document."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_al.api import create_app
from edge_al.registry import Registry
from tests.api_support import LABELS, build_workspace, check_response
from tests.helpers import publish_tiny

pytestmark = pytest.mark.stores


@pytest.fixture
def app(tmp_path: Path, db_url: str | None) -> Iterator[Flask]:
    settings, _ = build_workspace(tmp_path, n=30, db_url=db_url)
    app = create_app(settings, {"AUTH_REQUIRED": False, "START_MODEL": True})
    yield app
    app.extensions["edge_al"].stop()
    app.extensions["edge_al"].store.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def test_queue_items_say_why_they_were_picked(client: FlaskClient) -> None:
    doc = check_response(client.get("/v1/queue?n=5&annotator=eve"), "/v1/queue", "GET")
    assert doc["items"]
    for it in doc["items"]:
        reason = it["reason"]
        assert reason["code"] == reason["codes"][0] and reason["text"]
        top = sorted(it["probs"].values(), reverse=True)
        # "uncertain" exactly when the top two are within 0.2 of each other
        assert ("uncertain" in reason["codes"]) == (top[0] - top[1] < 0.2)


def test_label_examples_are_the_labeled_samples_of_that_class(client: FlaskClient) -> None:
    q = check_response(client.get("/v1/queue?n=3&annotator=eve"), "/v1/queue", "GET")["items"]
    body = {"annotations": [{"sample_id": it["sample_id"], "action": "correct", "label": "d3", "annotator": "eve"} for it in q]}
    assert client.post("/v1/annotations", json=body).status_code in (200, 201)
    doc = check_response(client.get("/v1/labels/examples?label=d3&n=2"), "/v1/labels/examples", "GET")
    assert doc["label"] == "d3" and len(doc["items"]) == 2
    assert {it["sample_id"] for it in doc["items"]} <= {it["sample_id"] for it in q}
    assert all(it["image_url"] == f"/v1/samples/{it['sample_id']}/image" for it in doc["items"])
    assert check_response(client.get("/v1/labels/examples?label=d7"), "/v1/labels/examples", "GET")["items"] == []
    resp = client.get("/v1/labels/examples")
    assert resp.status_code == 422 and "label" in resp.get_json()["detail"]


def test_stats_mark_which_versions_were_promoted(app: Flask, client: FlaskClient) -> None:
    registry: Registry = app.extensions["edge_al"].registry
    publish_tiny(registry, LABELS, seed=3, promote=False)  # trained, kept out: not on the curve
    doc = check_response(client.get("/v1/stats"), "/v1/stats", "GET")
    by_version: dict[str, Any] = {m["version"]: m for m in doc["models"]}
    assert by_version["v0001"]["promoted"] is True and by_version["v0002"]["promoted"] is False
    assert set(by_version["v0001"]["validation"]) == {"n", "trusted", "note"}
