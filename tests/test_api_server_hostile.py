"""A hostile corpus against the real server (``edge-al serve`` under waitress on 127.0.0.1).

Every case is sent as raw bytes on its own connection; none may get a 5xx, and every 4xx carries
an ``application/problem+json`` body. Then the limits that must hold before a body is read:
401/413 at the headers, no ``100 Continue`` for a refused request, and bounded metric labels.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
import schemathesis

from tests.test_api_fuzz import CONFIG, _fuzz
from tests.test_api_server import Server, _png, _start, _stop

pytestmark = pytest.mark.stores

BIG = "9" * 30
ID_MAX = 2**63 - 1


@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes
    head: bytes  # everything before the final response's headers ended (shows an interim 100 Continue)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_db_url: str | None) -> Iterator[Server]:
    srv = _start(tmp_path_factory.mktemp("hostile-server"), score=True, with_worker=False, n=12, db_url=module_db_url)
    yield srv
    _stop(srv)
    assert srv.proc.returncode == 0, srv.log.read_text()[-3000:]


def _address(server: Server) -> tuple[str, int]:
    url = urlsplit(server.base)
    return str(url.hostname), int(url.port or 80)


def _parse(data: bytes) -> Raw:
    head = b""
    while True:
        end = data.find(b"\r\n\r\n")
        assert end >= 0, f"no complete response: {data[:300]!r}"
        block, data = data[:end], data[end + 4 :]
        status = int(block.split(b"\r\n", 1)[0].split(b" ")[1])
        if status != 100:
            break
        head += block + b"\r\n\r\n"
    headers = {}
    for line in block.split(b"\r\n")[1:]:
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", len(data)))
    return Raw(status, headers, data[:length], head + block)


def send(server: Server, raw: bytes, *, timeout: float = 20.0, shut: bool = True) -> Raw:
    """Send ``raw`` on a new connection and read the response (until the server closes or says how long it is)."""
    with socket.create_connection(_address(server), timeout=timeout) as sock:
        sock.sendall(raw)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            parsed = _try_parse(data)
            if parsed is not None:
                return parsed
    return _parse(data)


def _try_parse(data: bytes) -> Raw | None:
    try:
        raw = _parse(data)
    except (AssertionError, ValueError, IndexError):
        return None
    return raw if "content-length" in raw.headers and len(raw.body) >= int(raw.headers["content-length"]) else None


def request(method: str, path: str, *, key: str | None = None, body: bytes = b"", ctype: str | None = None,
            headers: dict[str, str] | None = None, length: int | None = None) -> bytes:  # fmt: skip
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    if ctype is not None:
        lines.append(f"Content-Type: {ctype}")
    if body or length is not None:
        lines.append(f"Content-Length: {len(body) if length is None else length}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return "\r\n".join(lines).encode("utf-8") + b"\r\n\r\n" + body


def _multipart(parts: list[tuple[str, str, bytes]], boundary: str = "xyz") -> bytes:
    out = b""
    for name, filename, data in parts:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode()
        out += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _path_and_query_cases(keys: dict[str, str], png: bytes, add: Callable[[str, bytes], None]) -> None:
    """Cases: ids in paths and query values."""
    admin, annotator, scorer = keys["admin"], keys["annotator"], keys["scorer"]
    # ids in paths
    for sid in ("9223372036854775808", BIG, "0", "-1", "00000000000000000000000000001", "1e3", "%31", "١٢٣", "1" * 5000, str(ID_MAX)):
        add(f"sample {sid[:12]}", request("GET", f"/v1/samples/{sid}", key=admin))
        add(f"sample image {sid[:12]}", request("GET", f"/v1/samples/{sid}/image?size=64", key=admin))
        add(f"job {sid[:12]}", request("GET", f"/v1/jobs/{sid}", key=admin))
        add(f"cancel job {sid[:12]}", request("POST", f"/v1/jobs/{sid}/cancel", key=admin))
    add("promote a long version", request("POST", "/v1/models/" + "v" * 3000 + "/promote", key=admin))
    add("promote traversal", request("POST", "/v1/models/..%2F..%2Fetc/promote", key=admin))
    add("path of 60 KB", request("GET", "/v1/samples/" + "a" * 60_000, key=admin))
    # query values
    for q in (
        f"n={BIG}",
        "n=-5",
        "n=0",
        "n=201",
        "n=1.5",
        "n=",
        "strategy=%00",
        "strategy=" + "x" * 10_000,
        "n=1&n=2",
        "annotator=" + "a" * 500,
    ):
        add(f"queue ?{q[:20]}", request("GET", f"/v1/queue?{q}", key=annotator))
    add("jobs limit huge", request("GET", f"/v1/jobs?limit={BIG}", key=admin))
    add("score top_k huge", request("POST", f"/v1/score?top_k={BIG}", key=scorer, body=png, ctype="image/png"))
    add("score store=maybe", request("POST", "/v1/score?store=maybe", key=scorer, body=png, ctype="image/png"))
    add("thumbnail size -1", request("GET", "/v1/samples/1/image?size=-1", key=admin))


def _json_cases(keys: dict[str, str], png: bytes, add: Callable[[str, bytes], None]) -> None:
    """Cases: JSON shapes, numbers and strings."""
    admin, annotator, j = keys["admin"], keys["annotator"], "application/json"
    # JSON shapes and numbers
    bodies = {
        "deep 100k": b"[" * 100_000 + b"]" * 100_000,
        "deep objects 5k": b'{"a":' * 5000 + b"1" + b"}" * 5000,
        "int 5000 digits": b'{"sample_id": ' + b"7" * 5000 + b"}",
        "int 10**30": json.dumps({"sample_id": 10**30, "action": "accept"}).encode(),
        "int past int64": json.dumps({"sample_id": ID_MAX + 1, "action": "accept"}).encode(),
        "sample_id 0": json.dumps({"sample_id": 0, "action": "accept"}).encode(),
        "sample_id -1": json.dumps({"sample_id": -1, "action": "accept"}).encode(),
        "sample_id float": b'{"sample_id": 1.0, "action": "accept"}',
        "sample_id NaN": b'{"sample_id": NaN, "action": "accept"}',
        "sample_id Infinity": b'{"sample_id": Infinity, "action": "accept"}',
        "float 1e400": b'{"sample_id": 1e400, "action": "accept"}',
        "sample_id bool": b'{"sample_id": true, "action": "accept"}',
        "sample_id string": b'{"sample_id": "1", "action": "accept"}',
        "surrogate label": b'{"sample_id": 1, "action": "correct", "label": "\\ud800"}',
        "surrogate key": b'{"\\udc00": 1}',
        "NUL in label": b'{"sample_id": 1, "action": "correct", "label": "a\\u0000b"}',
        "null": b"null",
        "string": b'"hello"',
        "number": b"12",
        "empty": b"",
        "empty object": b"{}",
        "empty list": b"[]",
        "list of 1001": json.dumps([{"sample_id": 1, "action": "accept"}] * 1001).encode(),
        "list of numbers": b"[1, 2, 3]",
        "duplicate keys": b'{"sample_id": 1, "sample_id": 2, "action": "accept"}',
        "label of 1 MB": json.dumps({"sample_id": 1, "action": "correct", "label": "x" * 1_000_000}).encode(),
        "truncated": b'{"sample_id": 1, "act',
        "BOM": b"\xef\xbb\xbf" + json.dumps({"sample_id": 1, "action": "accept"}).encode(),
        "utf-16": json.dumps({"sample_id": 1, "action": "accept"}).encode("utf-16"),
        "latin-1": '{"sample_id": 1, "action": "correct", "label": "caf\xe9"}'.encode("latin-1"),
        "trailing garbage": b'{"sample_id": 1, "action": "accept"} xx',
    }
    for name, body in bodies.items():
        add(f"annotations: {name}", request("POST", "/v1/annotations", key=annotator, body=body, ctype=j))
        add(f"undo: {name}", request("POST", "/v1/annotations/undo", key=annotator, body=body, ctype=j))
        add(f"labels: {name}", request("POST", "/v1/labels", key=admin, body=body, ctype=j))
        add(f"jobs: {name}", request("POST", "/v1/jobs", key=admin, body=body, ctype=j))
    for name in ("\\ud800", "\\udfff\\ud800", "x" * 200, "", " ", "\\u0000"):
        add(f"label name {name[:10]!r}", request("POST", "/v1/labels", key=admin, body=f'{{"name": "{name}"}}'.encode(), ctype=j))
    add("jobs params not an object", request("POST", "/v1/jobs", key=admin, body=b'{"kind": "score", "params": [1]}', ctype=j))


def _type_and_image_cases(keys: dict[str, str], png: bytes, add: Callable[[str, bytes], None]) -> None:
    """Cases: content types, images and multipart bodies."""
    admin, annotator, scorer = keys["admin"], keys["annotator"], keys["scorer"]
    # content types
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "application/json; charset=utf-16", "application/jsonx",
                  "image/gif", "image/", "image/svg+xml", "multipart/form-data", "multipart/form-data; boundary=", "", "\x7f"):  # fmt: skip
        add(f"score as {ctype!r}", request("POST", "/v1/score", key=scorer, body=png, ctype=ctype))
        add(f"annotations as {ctype!r}", request("POST", "/v1/annotations", key=annotator, body=b"[]", ctype=ctype))
    add("score without content type", request("POST", "/v1/score", key=scorer, body=png))
    # images and multipart
    gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
    for name, data, ctype in (("gif", gif, "image/gif"), ("png as jpeg", png, "image/jpeg"), ("truncated png", png[: len(png) // 2], "image/png"),
                              ("empty image", b"", "image/png"), ("zeros", bytes(5000), "image/png")):  # fmt: skip
        add(f"score {name}", request("POST", "/v1/score", key=scorer, body=data, ctype=ctype))
        add(f"upload {name}", request("POST", "/v1/samples", key=admin, body=data, ctype=ctype))
    mp = "multipart/form-data; boundary=xyz"
    add(
        "multipart of 65 images",
        request("POST", "/v1/score", key=scorer, body=_multipart([("f", f"{i}.png", png) for i in range(65)]), ctype=mp),
    )
    add("multipart no parts", request("POST", "/v1/score", key=scorer, body=b"--xyz--\r\n", ctype=mp))
    add("multipart truncated", request("POST", "/v1/score", key=scorer, body=_multipart([("f", "a.png", png)])[:-40], ctype=mp))
    add("multipart wrong boundary", request("POST", "/v1/score", key=scorer, body=_multipart([("f", "a.png", png)], "abc"), ctype=mp))
    add("multipart garbage", request("POST", "/v1/score", key=scorer, body=b"\x00\xff" * 500, ctype=mp))
    add("multipart text field only", request("POST", "/v1/score", key=scorer,
        body=b'--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\nhello\r\n--xyz--\r\n', ctype=mp))  # fmt: skip
    add(
        "multipart filename traversal",
        request("POST", "/v1/samples", key=admin, body=_multipart([("f", "../../etc/x.png", gif)]), ctype=mp),
    )
    add("multipart gif part", request("POST", "/v1/score", key=scorer, body=_multipart([("f", "a.gif", gif)]), ctype=mp))


def _header_and_method_cases(keys: dict[str, str], png: bytes, add: Callable[[str, bytes], None]) -> None:
    """Cases: headers, request lines and methods."""
    admin, annotator, scorer, j = keys["admin"], keys["annotator"], keys["scorer"], "application/json"
    # headers
    add("header of 300 KB", request("GET", "/v1/stats", key=annotator, headers={"X-Big": "a" * 300_000}))
    add("2,000 headers", request("GET", "/v1/stats", key=annotator, headers={f"X-H{i}": "v" for i in range(2000)}))
    add("bad content-length", request("POST", "/v1/labels", key=admin, ctype=j, headers={"Content-Length": "abc"}))
    add("negative content-length", request("POST", "/v1/labels", key=admin, ctype=j, headers={"Content-Length": "-5"}))
    add("transfer-encoding gzip", request("POST", "/v1/labels", key=admin, ctype=j, headers={"Transfer-Encoding": "gzip"}))
    add("chunked garbage", request("POST", "/v1/labels", key=admin, ctype=j, headers={"Transfer-Encoding": "chunked"}) + b"zz\r\nxx\r\n")
    add("chunked valid", request("POST", "/v1/labels", key=admin, ctype=j, headers={"Transfer-Encoding": "chunked"})
        + b'c\r\n{"name": 12}\r\n0\r\n\r\n')  # fmt: skip
    add("bearer empty", request("GET", "/v1/stats", headers={"Authorization": "Bearer "}))
    add("bearer of 100 KB", request("GET", "/v1/stats", headers={"Authorization": "Bearer " + "k" * 100_000}))
    add(
        "bearer latin-1",
        "GET /v1/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer \xe9\xff\r\n\r\n".encode("latin-1"),
    )
    add("x-api-key revoked-looking", request("GET", "/v1/stats", headers={"X-API-Key": "eal_" + "A" * 43}))
    add("basic auth", request("GET", "/v1/stats", headers={"Authorization": "Basic YWRtaW46YWRtaW4="}))
    add("if-none-match garbage", request("GET", "/v1/samples/1/image", key=admin, headers={"If-None-Match": '"' * 1000}))
    add("range garbage", request("GET", "/v1/samples/1/image", key=admin, headers={"Range": "bytes=99999999999999999999-"}))
    add("accept garbage", request("GET", "/v1/stats", key=annotator, headers={"Accept": "*/*;q=abc, \x01"}))
    add("host missing", b"GET /v1/stats HTTP/1.1\r\nConnection: close\r\n\r\n")
    add("request line garbage", b"GARBAGE\r\n\r\n")
    add("HTTP/0.9", b"GET /v1/stats\r\n\r\n")
    add("HTTP/2.0 line", b"GET /v1/stats HTTP/2.0\r\nHost: x\r\n\r\n")
    add("absolute URI", request("GET", "http://evil.example/v1/stats", key=annotator))
    add("NUL in path", request("GET", "/v1/samples/1\x00", key=admin))
    add("percent garbage", request("GET", "/v1/samples/%zz%ff", key=admin))
    # methods
    for method in ("FOO", "PROPFIND", "TRACE", "CONNECT", "PATCH", "DELETE", "PUT", "get", "X" * 200):
        add(f"method {method[:10]}", request(method, "/v1/samples/1", key=admin))
    add("OPTIONS", request("OPTIONS", "/v1/score", key=scorer))
    add("HEAD image", request("HEAD", "/v1/samples/1/image", key=admin))


def _corpus(server: Server) -> list[tuple[str, bytes]]:
    cases: list[tuple[str, bytes]] = []
    for build in (_path_and_query_cases, _json_cases, _type_and_image_cases, _header_and_method_cases):
        build(server.keys, _png(server, 0), lambda name, raw: cases.append((name, raw)))
    return cases


# RFC 9112 6.1: a transfer coding the server does not implement is answered 501 (a refusal, not a fault)
_ALLOWED_5XX = {"transfer-encoding gzip": 501}


def _check(name: str, reply: Raw, method: str) -> list[str]:
    problems = []
    if reply.status >= 500 and _ALLOWED_5XX.get(name) != reply.status:
        problems.append(f"{name}: {reply.status} {reply.body[:200]!r}")
    if reply.status >= 400 and method != "HEAD":
        ctype = reply.headers.get("content-type", "").split(";")[0]
        if ctype != "application/problem+json":
            problems.append(f"{name}: {reply.status} with {ctype!r}: {reply.body[:120]!r}")
        else:
            doc = json.loads(reply.body)
            if doc.get("status") != reply.status or not doc.get("detail"):
                problems.append(f"{name}: problem body {doc}")
    return problems


def test_hostile_corpus_gets_no_5xx_and_problem_bodies(server: Server) -> None:
    failures: list[str] = []
    statuses: dict[int, int] = {}
    corpus = _corpus(server)
    for name, raw in corpus:
        reply = send(server, raw)
        statuses[reply.status] = statuses.get(reply.status, 0) + 1
        failures += _check(name, reply, raw.split(b" ", 1)[0].decode("latin-1"))
    assert not failures, "\n".join(failures)
    print(f"{len(corpus)} hostile requests; statuses {dict(sorted(statuses.items()))}")
    assert len(corpus) > 250 and statuses.get(200, 0) < len(corpus) // 4, statuses
    assert server.call("GET", "/readyz").status == 200  # still serving
    assert "Traceback" not in server.log.read_text()


def test_anonymous_upload_refused_before_the_body(server: Server) -> None:
    # 100 MB declared (under the body limit), no key, nothing of the body sent: the answer comes anyway
    reply = send(server, request("POST", "/v1/samples", ctype="image/png", length=100_000_000), timeout=10, shut=False)
    assert reply.status == 401 and reply.headers["content-type"] == "application/problem+json"
    assert b"not read" in reply.body
    # a scorer key on an annotator route: 403, also before the body
    reply = send(
        server, request("POST", "/v1/samples", key=server.keys["scorer"], ctype="image/png", length=10_000_000), timeout=10, shut=False
    )
    assert reply.status == 403
    # 200 MB, over the service's limit (128 MiB): 413 from the declared length, with a valid key
    reply = send(
        server, request("POST", "/v1/score", key=server.keys["scorer"], ctype="image/png", length=200_000_000), timeout=10, shut=False
    )
    assert reply.status == 413 and reply.headers["content-type"] == "application/problem+json"


def test_expect_continue_is_not_granted_to_a_refused_request(server: Server) -> None:
    for raw in (
        request("POST", "/v1/score", key=server.keys["scorer"], ctype="image/png", length=200_000_000, headers={"Expect": "100-continue"}),
        request("POST", "/v1/score", ctype="image/png", length=1_000_000, headers={"Expect": "100-continue"}),
    ):
        reply = send(server, raw, timeout=10, shut=False)
        assert b"100 Continue" not in reply.head and reply.status in {401, 413}
    # an accepted one still gets its 100 Continue and then its answer
    png = _png(server, 1)
    with socket.create_connection(_address(server), timeout=10) as sock:
        head = request(
            "POST", "/v1/score", key=server.keys["scorer"], ctype="image/png", length=len(png), headers={"Expect": "100-continue"}
        )
        sock.sendall(head)
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(png)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert _parse(data).status == 200


def test_uploads_cut_short_leave_the_server_serving(server: Server) -> None:
    png = _png(server, 2)
    for raw in (
        request("POST", "/v1/score", key=server.keys["scorer"], ctype="image/png", length=len(png))[: -len(png) // 2],
        request("POST", "/v1/score", key=server.keys["scorer"], ctype="multipart/form-data; boundary=xyz", length=100_000)
        + _multipart([("f", "a.png", png)])[:500],
        request("POST", "/v1/labels", key=server.keys["admin"], ctype="application/json", length=50) + b'{"name": "tr',
    ):
        with socket.create_connection(_address(server), timeout=10) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)  # the client goes away mid-body
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert not data or _parse(data).status < 500
    assert server.call("POST", "/v1/score", role="scorer", data=png, content_type="image/png").status == 200
    assert "Traceback" not in server.log.read_text()


def test_made_up_methods_do_not_grow_metrics(server: Server) -> None:
    for i in range(5):
        send(server, request(f"M{i}X", "/v1/stats"))
    before = server.call("GET", "/metrics").body.decode().count("\n")
    for i in range(60):
        send(server, request(f"NEW{i}", f"/nowhere/{i}"))
        send(server, request(f"ODD{i}", "/v1/stats"))
    text = server.call("GET", "/metrics").body.decode()
    assert 'method="NEW' not in text and 'method="ODD' not in text and "/nowhere/" not in text
    assert text.count("\n") - before <= 40  # the histogram's buckets of one new series at most, not 120 series


@pytest.mark.slow
def test_fuzz_from_the_document_against_the_real_server(server: Server) -> None:
    """The run of tests/test_api_fuzz.py (every check, three roles), through waitress and its header-time checks."""
    schema = schemathesis.openapi.from_url(server.base + "/v1/openapi.json", config=CONFIG)
    failures: list[str] = []
    for result in schema.get_all_operations():
        failures += _fuzz(result.ok(), server.keys, 3, base_url=server.base, timeout=30)
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:40])
