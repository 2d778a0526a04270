"""The README's gunicorn deployment, run for real: ``gunicorn --workers 1 --threads 8
'edge_al.api:create_app()'`` on 127.0.0.1 serves the API, and refuses anonymous, wrong-role and
over-limit uploads from their headers, before the client has sent any of the body.

waitress reads a whole body before it calls the app, so ``edge-al serve`` checks at the headers
(``edge_al.api.wsgi_server``); gunicorn streams the body to the app, and the app answers before
it reads (``tests/test_api_auth.py``). What gunicorn does on its own, and edge-al cannot change:
it answers ``Expect: 100-continue`` before the app runs, and after a refusal it discards at most
64 KiB of the unread body before it closes the connection (its gthread worker's drain cap).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.test_api_server import Server, _png, _start, _stop
from tests.test_api_server_hostile import request, send

pytest.importorskip("gunicorn")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = _start(tmp_path_factory.mktemp("gunicorn"), score=True, with_worker=False, n=8, wsgi="gunicorn")
    yield srv
    _stop(srv)
    assert srv.proc.returncode == 0, srv.log.read_text()[-3000:]


def test_gunicorn_serves_scores_and_annotations(server: Server) -> None:
    assert server.call("GET", "/readyz").status == 200
    scored = server.call("POST", "/v1/score", role="scorer", data=_png(server), content_type="image/png")
    assert scored.status == 200, scored.body
    result = scored.body["results"][0]
    assert scored.body["model_version"] == "v0001" and result["label"] == result["top_k"][0]["label"], scored.body
    assert 0 < result["confidence"] <= 1
    queue = server.call("GET", "/v1/queue?n=2", role="annotator")
    assert queue.status == 200 and len(queue.body["items"]) == 2
    first = queue.body["items"][0]["sample_id"]
    done = server.call("POST", "/v1/annotations", role="annotator", json_body=[{"sample_id": first, "action": "accept"}])
    assert done.status == 200, done.body
    assert server.call("POST", "/v1/annotations", role="scorer", json_body=[{"sample_id": first, "action": "accept"}]).status == 403


def test_gunicorn_refuses_uploads_from_their_headers(server: Server) -> None:
    # the body is never sent (shut=False): an answer that waited for it would time out
    cases = [
        (request("POST", "/v1/samples", ctype="image/png", length=100_000_000), 401),
        (request("POST", "/v1/samples", key="not-a-key", ctype="image/png", length=100_000_000), 401),
        (request("POST", "/v1/samples", key=server.keys["scorer"], ctype="image/png", length=10_000_000), 403),
        (request("POST", "/v1/score", key=server.keys["scorer"], ctype="image/png", length=200_000_000), 413),  # over 128 MiB
    ]
    for raw, status in cases:
        reply = send(server, raw, timeout=10, shut=False)
        assert reply.status == status, (raw[:80], reply.status, reply.body[:200])
        assert reply.headers["content-type"] == "application/problem+json"
        assert json.loads(reply.body)["status"] == status
    assert server.call("GET", "/readyz").status == 200  # still serving
