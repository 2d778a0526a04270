"""Per-key rate limits (429 problems with Retry-After) and bounded metric labels, through the test client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from edge_al.api import create_app
from edge_al.api.auth import create_key
from edge_al.store import open_store
from tests.api_support import build_workspace, check_response

pytestmark = pytest.mark.stores


@pytest.fixture
def limited(tmp_path: Any, db_url: str | None) -> Iterator[tuple[Flask, dict[str, str]]]:
    settings, _ = build_workspace(tmp_path, n=4, db_url=db_url)
    store = open_store(settings)
    keys = {role: create_key(store, role, f"{role}-1")[1] for role in ("scorer", "annotator", "admin")}
    keys["annotator-2"] = create_key(store, "annotator", "second")[1]
    store.close()
    app = create_app(settings, {"START_MODEL": True, "RATE_LIMIT_ANNOTATOR": "3/minute"})
    yield app, keys
    app.extensions["edge_al"].stop()
    app.extensions["edge_al"].store.close()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_annotator_key_past_its_budget_gets_429_and_others_do_not(limited: tuple[Flask, dict[str, str]]) -> None:
    app, keys = limited
    client = app.test_client()
    assert [client.get("/v1/labels", headers=_auth(keys["annotator"])).status_code for _ in range(3)] == [200] * 3
    resp = client.get("/v1/stats", headers=_auth(keys["annotator"]))  # one budget across routes
    doc = check_response(resp, "/v1/stats", "GET")
    assert (
        resp.status_code == 429 and int(resp.headers["Retry-After"]) > 0 and "3 per 1 minute" in doc["detail"] and "retry" in doc["detail"]
    )
    assert client.get("/v1/labels", headers=_auth(keys["annotator-2"])).status_code == 200  # per key, not per address
    assert client.get("/healthz").status_code == 200  # public routes are not counted


def test_scorer_keys_are_not_limited_by_default(limited: tuple[Flask, dict[str, str]]) -> None:
    app, keys = limited
    client = app.test_client()
    statuses = {client.post("/v1/score", data=b"x", content_type="image/png", headers=_auth(keys["scorer"])).status_code for _ in range(20)}
    assert statuses == {400}  # each refused for its body, none for its rate


def test_unknown_methods_and_routes_collapse_to_one_label(limited: tuple[Flask, dict[str, str]]) -> None:
    app, _ = limited
    client = app.test_client()
    for i in range(30):
        client.open(f"/nowhere/{i}", method=f"M{i}")
        client.open("/healthz", method=f"Q{i}")
    text = client.get("/metrics").get_data(as_text=True)
    methods = {line.split('method="')[1].split('"')[0] for line in text.splitlines() if line.startswith("edge_al_http_requests_total")}
    assert methods <= {"GET", "other"} and "other" in methods
    assert "/nowhere/" not in text
