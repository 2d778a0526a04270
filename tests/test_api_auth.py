"""API keys: each role on each route, key handling, and the CLI verbs that manage keys and refuse unsafe serving."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_al.api import create_app
from edge_al.api.auth import create_key, list_keys, revoke_key
from edge_al.api.cli import is_loopback
from edge_al.cli import main
from edge_al.store import open_store
from tests.api_support import build_workspace, check_response, template

pytestmark = pytest.mark.stores

ROLES = ("scorer", "annotator", "admin")

# method, path, request kwargs, role the route needs (None: public)
ROUTES: list[tuple[str, str, dict[str, Any], str | None]] = [
    ("POST", "/v1/score", {"data": b"x", "content_type": "image/png"}, "scorer"),
    ("POST", "/v1/samples", {"data": b"x", "content_type": "image/png"}, "annotator"),
    ("GET", "/v1/samples/1", {}, "annotator"),
    ("GET", "/v1/samples/1/image", {}, "annotator"),
    ("GET", "/v1/queue?n=1", {}, "annotator"),
    ("POST", "/v1/annotations", {"json": []}, "annotator"),
    ("POST", "/v1/annotations/undo", {"json": {"sample_id": 1}}, "annotator"),
    ("GET", "/v1/labels", {}, "annotator"),
    ("GET", "/v1/labels/examples?label=d1", {}, "annotator"),
    ("POST", "/v1/labels", {"json": {"name": "new"}}, "admin"),
    ("GET", "/v1/stats", {}, "annotator"),
    ("GET", "/v1/jobs", {}, "admin"),
    ("POST", "/v1/jobs", {"json": {"kind": "nope"}}, "admin"),
    ("GET", "/v1/jobs/999", {}, "admin"),
    ("POST", "/v1/jobs/999/cancel", {}, "admin"),
    ("GET", "/v1/models", {}, "admin"),
    ("GET", "/v1/models/active", {}, "scorer"),
    ("GET", "/v1/models/v0001/files/model.xml", {}, "scorer"),
    ("POST", "/v1/models/v0999/promote", {}, "admin"),
    ("POST", "/v1/models/rollback", {}, "admin"),
    ("GET", "/healthz", {}, None),
    ("GET", "/readyz", {}, None),
    ("GET", "/metrics", {}, None),
    ("GET", "/v1/openapi.json", {}, None),
]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, module_db_url: str | None) -> Iterator[tuple[Flask, dict[str, str]]]:
    settings, _ = build_workspace(tmp_path_factory.mktemp("auth"), n=4, db_url=module_db_url)
    store = open_store(settings)
    keys = {role: create_key(store, role, f"{role}-1")[1] for role in ROLES}
    revoked_id, keys["revoked"] = create_key(store, "admin", "old")
    revoke_key(store, revoked_id)
    store.close()
    app = create_app(settings, {"START_MODEL": True})
    yield app, keys
    app.extensions["edge_al"].stop()


def _call(client: FlaskClient, method: str, path: str, kwargs: dict[str, Any], headers: dict[str, str]) -> Any:
    return client.open(path, method=method, headers=headers, **kwargs)


def test_routes_table_covers_every_route(secured: tuple[Flask, dict[str, str]]) -> None:
    app, _ = secured
    have = {(m, template(r.rule)) for r in app.url_map.iter_rules() if r.rule.startswith(("/v1/", "/healthz", "/readyz", "/metrics"))
            for m in r.methods or () if m not in {"HEAD", "OPTIONS"}}  # fmt: skip
    adapter = app.url_map.bind("localhost")
    covered = {(m, template(adapter.match(p.split("?")[0], method=m, return_rule=True)[0].rule)) for m, p, _, _ in ROUTES}
    assert have == covered


@pytest.mark.parametrize(("method", "path", "kwargs", "role"), ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_each_role_on_each_route(
    secured: tuple[Flask, dict[str, str]], method: str, path: str, kwargs: dict[str, Any], role: str | None
) -> None:
    app, keys = secured
    client = app.test_client()
    no_key = _call(client, method, path, kwargs, {})
    if role is None:
        assert no_key.status_code in {200, 503}
        return
    assert no_key.status_code == 401 and no_key.mimetype == "application/problem+json"
    assert "Bearer" in no_key.headers["WWW-Authenticate"]
    for bad in ({"Authorization": "Bearer eal_wrong"}, {"X-API-Key": "nope"}, {"Authorization": "Basic abc"},
                {"Authorization": f"Bearer {keys['revoked']}"}):  # fmt: skip
        assert _call(client, method, path, kwargs, bad).status_code == 401, bad
    for have in ROLES:
        resp = _call(client, method, path, kwargs, {"Authorization": f"Bearer {keys[have]}"})
        allowed = have == "admin" or have == role
        if allowed:
            assert resp.status_code not in {401, 403}, (have, resp.get_json())
        else:
            assert resp.status_code == 403, (have, resp.status_code)
            body = resp.get_json()
            assert body["type"].endswith("wrong-role") and role in body["detail"]
    # the X-API-Key header works the same way
    resp = _call(client, method, path, kwargs, {"X-API-Key": keys["admin"]})
    assert resp.status_code not in {401, 403}


@pytest.mark.parametrize("route", [r for r in ROUTES if r[0] == "POST" and r[3] is not None], ids=lambda r: r[1])
def test_a_refused_request_leaves_its_body_unread_under_any_wsgi_server(
    secured: tuple[Flask, dict[str, str]], route: tuple[str, str, dict[str, Any], str | None]
) -> None:
    """The app answers 401/403 before it reads a byte of the body, so gunicorn (or any WSGI server
    that streams the body to the app) reads none of it either; waitress reads the whole body
    before it calls the app, which is why ``edge_al.api.wsgi_server`` makes the same check at the
    headers (tests/test_api_server_hostile.py)."""
    app, keys = secured
    method, path, _, role = route
    lacking = ROLES[ROLES.index(role) - 1] if ROLES.index(role) > 0 else None  # the role just below: ROLES ascend
    attempts = [({}, 401), ({"X-API-Key": "not-a-key"}, 401), ({"X-API-Key": keys["revoked"]}, 401)]
    if lacking is not None:
        attempts.append(({"Authorization": f"Bearer {keys[lacking]}"}, 403))
    for headers, status in attempts:
        body = io.BytesIO(b'{"sample_id": 1}' + b" " * 65_520)  # its position: what the app read, by any read call
        resp = app.test_client().open(
            path, method=method, headers=headers, input_stream=body, content_length=65_536, content_type="application/json"
        )
        assert resp.status_code == status, (headers, resp.get_data(as_text=True))
        assert body.tell() == 0, f"{method} {path} read {body.tell()} bytes of the body before its {status}"


def test_problem_bodies_of_auth_errors_match_the_document(secured: tuple[Flask, dict[str, str]]) -> None:
    app, keys = secured
    client = app.test_client()
    check_response(client.get("/v1/models"), "/v1/models", "GET")
    check_response(client.get("/v1/models", headers={"X-API-Key": keys["scorer"]}), "/v1/models", "GET")
    check_response(client.get("/v1/models", headers={"X-API-Key": keys["admin"]}), "/v1/models", "GET")


def test_annotator_name_defaults_to_key_name(secured: tuple[Flask, dict[str, str]]) -> None:
    app, keys = secured
    client = app.test_client()
    h = {"Authorization": f"Bearer {keys['annotator']}"}
    queue = client.get("/v1/queue?n=1", headers=h).get_json()
    assert queue["holder"] == "annotator-1"
    sid = queue["items"][0]["sample_id"]
    assert client.post("/v1/annotations", json=[{"sample_id": sid, "action": "reject"}], headers=h).status_code == 200
    store = app.extensions["edge_al"].store
    assert store.current_annotations()[sid].annotator == "annotator-1"


def test_keys_are_stored_hashed(tmp_path: Path, db_url: str | None) -> None:
    store = open_store(db_url or tmp_path / "db.sqlite3")
    key_id, token = create_key(store, "scorer", "line 3")
    dump = "\n".join(str(tuple(row)) for table in store.backend.tables(store._conn()) for row in store.query(f"SELECT * FROM {table}"))
    assert token not in dump and hashlib.sha256(token.encode()).hexdigest() in dump
    assert token.startswith("eal_") and len(token) > 40
    assert list_keys(store) == [
        {"id": key_id, "role": "scorer", "name": "line 3", "created_at": list_keys(store)[0]["created_at"], "revoked": False}
    ]
    assert revoke_key(store, key_id) is True and revoke_key(store, key_id) is False
    with pytest.raises(Exception, match="does not exist"):
        revoke_key(store, 999)
    with pytest.raises(Exception, match="role"):
        create_key(store, "root")
    store.close()


def test_keys_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path / "home")
    assert main(["--home", home, "--json", "keys", "add", "--role", "admin", "--name", "ops"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert added["role"] == "admin" and added["key"].startswith("eal_")
    assert main(["--home", home, "keys", "add", "--role", "scorer"]) == 0
    out = capsys.readouterr().out
    assert "eal_" in out
    assert main(["--home", home, "--json", "keys", "list"]) == 0
    listed = json.loads(capsys.readouterr().out)["keys"]
    assert [(k["role"], k["revoked"]) for k in listed] == [("admin", False), ("scorer", False)]
    assert "eal_" not in json.dumps(listed)
    assert main(["--home", home, "keys", "revoke", str(added["id"])]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["--home", home, "--json", "keys", "list"]) == 0
    assert json.loads(capsys.readouterr().out)["keys"][0]["revoked"] is True
    assert main(["--home", home, "keys", "revoke", "42"]) == 1
    with pytest.raises(SystemExit):
        main(["--home", home, "keys", "add", "--role", "root"])


def test_serve_refuses_unsafe_setups(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path / "home")
    assert main(["--home", home, "serve", "--no-auth", "--host", "0.0.0.0"]) == 1
    assert "only binds to localhost" in capsys.readouterr().err
    assert main(["--home", home, "serve", "--host", "127.0.0.1"]) == 1
    assert f"edge-al --home {home} keys add --role admin" in capsys.readouterr().err  # the hint keeps --home
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.com"))
