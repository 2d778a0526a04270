"""Annotator identity comes from the key: decisions, undo and leases belong to the key's name;
a key holds a bounded number of live leases; admins act for anyone. Through the Flask test client
(the real server is in test_api_server.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_al.api import create_app
from edge_al.api.auth import create_key
from edge_al.errors import InvalidInput
from edge_al.store import Store, open_store
from tests.api_support import build_workspace, check_response

pytestmark = pytest.mark.stores

PEOPLE = ("alice", "bob")


@pytest.fixture
def secured(tmp_path: Path, db_url: str | None) -> Iterator[tuple[Flask, dict[str, dict[str, str]]]]:
    settings, _ = build_workspace(tmp_path, n=30, db_url=db_url)
    store = open_store(settings)
    keys = {name: create_key(store, "annotator", name)[1] for name in PEOPLE}
    keys["admin"] = create_key(store, "admin", "lead")[1]
    keys["scorer"] = create_key(store, "scorer", "line-3")[1]
    store.close()
    app = create_app(settings, {"START_MODEL": True, "MAX_LEASES_PER_KEY": 6})
    yield app, {who: {"Authorization": f"Bearer {k}"} for who, k in keys.items()}
    app.extensions["edge_al"].stop()


def _queue(client: FlaskClient, h: dict[str, str], query: str = "n=3") -> dict[str, Any]:
    body: dict[str, Any] = check_response(client.get(f"/v1/queue?{query}", headers=h), "/v1/queue", "GET")
    return body


def _ids(queue: dict[str, Any]) -> set[int]:
    return {int(it["sample_id"]) for it in queue["items"]}


def test_decisions_are_recorded_under_the_keys_name(secured: tuple[Flask, dict[str, dict[str, str]]]) -> None:
    app, h = secured
    c = app.test_client()
    sid = next(iter(_ids(_queue(c, h["alice"]))))
    # alice claims to be bob: ignored, the decision is hers
    doc = check_response(c.post("/v1/annotations", json=[{"sample_id": sid, "action": "reject", "annotator": "bob"}], headers=h["alice"]),
                         "/v1/annotations", "POST")  # fmt: skip
    assert doc["written"] == 1
    store: Store = app.extensions["edge_al"].store
    assert store.current_annotations()[sid].annotator == "alice"
    # an admin records for a named annotator (an import on someone's behalf)
    other = sorted(set(store.sample_ids().tolist()) - store.leased_ids() - {sid})[0]
    doc = check_response(c.post("/v1/annotations", json=[{"sample_id": other, "action": "reject", "annotator": "carol"}], headers=h["admin"]),
                         "/v1/annotations", "POST")  # fmt: skip
    assert doc["written"] == 1 and store.current_annotations()[other].annotator == "carol"


def test_annotator_parameter_cannot_take_over_another_lease(secured: tuple[Flask, dict[str, dict[str, str]]]) -> None:
    app, h = secured
    c = app.test_client()
    bobs = _queue(c, h["bob"])
    assert bobs["holder"] == "bob" and len(bobs["items"]) == 3
    mine = _queue(c, h["alice"], "n=6&annotator=bob")
    assert mine["holder"] == "alice" and not _ids(mine) & _ids(bobs)
    # bob's leases are still bob's: his next call renews the same samples
    assert _ids(_queue(c, h["bob"])) == _ids(bobs)


def test_a_decision_on_a_sample_leased_by_someone_else_is_409(secured: tuple[Flask, dict[str, dict[str, str]]]) -> None:
    app, h = secured
    c = app.test_client()
    store: Store = app.extensions["edge_al"].store
    s_bob, *_ = sorted(_ids(_queue(c, h["bob"])))
    s_alice = sorted(_ids(_queue(c, h["alice"])))[0]
    resp = c.post("/v1/annotations", json=[{"sample_id": s_bob, "action": "reject"}], headers=h["alice"])
    doc = check_response(resp, "/v1/annotations", "POST")
    assert resp.status_code == 409 and doc["type"].endswith("leased-to-another") and doc["written"] == 0
    assert doc["errors"] == [{"index": 0, "status": 409, "detail": doc["errors"][0]["detail"]}]
    assert "leased to another annotator" in doc["errors"][0]["detail"] and s_bob not in store.current_annotations()
    # mixed with a malformed item: 422, each entry with its own status; alice's own sample is committed
    resp = c.post("/v1/annotations", headers=h["alice"], json=[{"sample_id": s_bob, "action": "reject"},
                  {"sample_id": s_alice, "action": "reject"}, {"sample_id": s_alice, "action": "melt"}])  # fmt: skip
    doc = check_response(resp, "/v1/annotations", "POST")
    assert resp.status_code == 422 and doc["written"] == 1 and [e["status"] for e in doc["errors"]] == [409, 422]
    # an admin may decide on a leased sample
    resp = c.post("/v1/annotations", json=[{"sample_id": s_bob, "action": "reject"}], headers=h["admin"])
    assert resp.status_code == 200 and store.current_annotations()[s_bob].annotator == "lead"


def test_an_annotator_undoes_only_their_own_decisions(secured: tuple[Flask, dict[str, dict[str, str]]]) -> None:
    app, h = secured
    c = app.test_client()
    store: Store = app.extensions["edge_al"].store
    sid = sorted(_ids(_queue(c, h["alice"])))[0]
    post = {"sample_id": sid, "action": "correct", "label": "d1"}
    assert c.post("/v1/annotations", json=[post], headers=h["alice"]).status_code == 200
    resp = c.post("/v1/annotations/undo", json={"sample_id": sid, "annotator": "alice"}, headers=h["bob"])
    doc = check_response(resp, "/v1/annotations/undo", "POST")
    assert resp.status_code == 403 and doc["type"].endswith("not-permitted") and "only their own" in doc["detail"]
    assert store.current_annotations()[sid].label == "d1"
    # the admin undoes anyone's; alice re-posts the decision that no longer stands: written, not "unchanged"
    undo = check_response(c.post("/v1/annotations/undo", json={"sample_id": sid}, headers=h["admin"]), "/v1/annotations/undo", "POST")
    assert undo["undone"] is True and sid not in store.current_annotations()
    doc = check_response(c.post("/v1/annotations", json=[post], headers=h["alice"]), "/v1/annotations", "POST")
    assert (doc["written"], doc["unchanged"]) == (1, 0)
    undo = check_response(c.post("/v1/annotations/undo", json={"sample_id": sid}, headers=h["alice"]), "/v1/annotations/undo", "POST")
    assert undo["undone"] is True
    doc = check_response(c.post("/v1/annotations", json=[post], headers=h["alice"]), "/v1/annotations", "POST")
    assert (doc["written"], doc["unchanged"]) == (1, 0)


def test_a_key_holds_a_bounded_number_of_leases(secured: tuple[Flask, dict[str, dict[str, str]]]) -> None:
    app, h = secured
    c = app.test_client()
    first = _queue(c, h["alice"], "n=10")
    assert len(first["items"]) == 6 and (first["leases_held"], first["lease_limit"]) == (6, 6)
    # at the limit: the same samples again (renewed), nothing new, whatever n is asked
    again = _queue(c, h["alice"], "n=10&strategy=entropy")
    assert _ids(again) == _ids(first) and again["leases_held"] == 6
    # others are not starved
    assert len(_queue(c, h["bob"], "n=6")["items"]) == 6
    # deciding frees room
    done = sorted(_ids(first))[:2]
    resp = c.post("/v1/annotations", json=[{"sample_id": s, "action": "reject"} for s in done], headers=h["alice"])
    assert resp.status_code == 200
    nxt = _queue(c, h["alice"], "n=10")
    assert len(nxt["items"]) == 6 and nxt["leases_held"] == 6 and len(_ids(nxt) - _ids(first)) == 2


def test_stats_per_class_unlabeled_agrees_with_the_total_after_undo(secured: tuple[Flask, dict[str, dict[str, str]]]) -> None:
    app, h = secured
    c = app.test_client()
    ids = sorted(_ids(_queue(c, h["alice"], "n=4")))
    c.post("/v1/annotations", json=[{"sample_id": s, "action": "correct", "label": "d2"} for s in ids], headers=h["alice"])
    for s in ids[:3]:
        assert c.post("/v1/annotations/undo", json={"sample_id": s}, headers=h["alice"]).get_json()["undone"] is True
    stats = check_response(c.get("/v1/stats", headers=h["alice"]), "/v1/stats", "GET")
    assert stats["pool_size"] == 30 and stats["labeled"] == 1 and stats["unlabeled"] == 29
    assert sum(stats["unlabeled_predicted_per_class"].values()) == stats["unlabeled"]


def test_annotator_keys_need_a_name(tmp_path: Path, db_url: str | None) -> None:
    store = open_store(db_url or tmp_path / "db.sqlite3")
    with pytest.raises(InvalidInput, match="give their name"):
        create_key(store, "annotator")
    with pytest.raises(InvalidInput, match="printable"):
        create_key(store, "annotator", "al\x00ice")
    assert create_key(store, "scorer")[0] >= 1  # line systems need no person's name
    store.close()
