"""Request overhead of schema libraries on a Flask route: plain, spectree, flask-openapi3.

Times N requests through the Flask test client (no network) for one JSON body route
(POST, two fields) and one query route (GET ?n=): the same pydantic v2 model for both libraries.
Usage: python scripts/bench_api_schema.py [N]
"""

from __future__ import annotations

import copy
import sys
import time
from typing import Any, Literal

from flask import Blueprint, Flask, jsonify, request
from pydantic import BaseModel, ConfigDict, Field


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_id: int = Field(ge=1, le=2**63 - 1)
    action: Literal["accept", "correct", "reject"]


class Query(BaseModel):
    n: int = Field(20, ge=1, le=200)


class Out(BaseModel):
    ok: bool


def plain() -> Flask:
    app = Flask("plain")

    @app.post("/a")
    def a() -> Any:
        body = request.get_json()
        sid = body.get("sample_id")
        if not isinstance(sid, int) or not 1 <= sid < 2**63 or body.get("action") not in {"accept", "correct", "reject"}:
            return jsonify({"error": "bad"}), 422
        return jsonify({"ok": True})

    @app.get("/q")
    def q() -> Any:
        n = int(request.args.get("n", 20))
        return jsonify({"ok": 1 <= n <= 200})

    return app


def pydantic_only() -> Flask:
    app = Flask("pyd")

    @app.post("/a")
    def a() -> Any:
        Item.model_validate_json(request.get_data())
        return jsonify(Out(ok=True).model_dump())

    @app.get("/q")
    def q() -> Any:
        Query.model_validate(request.args.to_dict())
        return jsonify({"ok": True})

    return app


def spectree_app() -> Flask:
    from spectree import Response, SpecTree

    spec = SpecTree("flask", mode="strict")
    app = Flask("spectree")
    bp = Blueprint("x", __name__)

    @bp.post("/a")
    @spec.validate(json=Item, resp=Response(HTTP_200=Out))
    def a() -> Any:
        return jsonify({"ok": True})

    @bp.get("/q")
    @spec.validate(query=Query, resp=Response(HTTP_200=Out))
    def q() -> Any:
        return jsonify({"ok": True})

    app.register_blueprint(bp)
    spec.register(app)
    return app


def openapi3_app() -> Flask:
    from flask_openapi3 import APIBlueprint, OpenAPI

    app = OpenAPI("openapi3")
    bp = APIBlueprint("x", __name__)

    @bp.post("/a", responses={200: Out})
    def a(body: Item) -> Any:
        return jsonify({"ok": True})

    @bp.get("/q", responses={200: Out})
    def q(query: Query) -> Any:
        return jsonify({"ok": True})

    app.register_api(bp)
    return app


class CachedQuery(BaseModel):
    """``Query`` with its JSON schema computed once (flask-openapi3 asks for it on every request)."""

    n: int = Field(20, ge=1, le=200)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in _SCHEMAS:
            _SCHEMAS[key] = super().model_json_schema(*args, **kwargs)
        return copy.deepcopy(_SCHEMAS[key])


_SCHEMAS: dict[Any, dict[str, Any]] = {}


def openapi3_cached_app() -> Flask:
    from flask_openapi3 import APIBlueprint, OpenAPI

    app = OpenAPI("openapi3-cached")
    bp = APIBlueprint("x", __name__)

    @bp.post("/a", responses={200: Out})
    def a(body: Item) -> Any:
        return jsonify({"ok": True})

    @bp.get("/q", responses={200: Out})
    def q(query: CachedQuery) -> Any:
        return jsonify({"ok": True})

    app.register_api(bp)
    return app


def run(app: Flask, n: int) -> tuple[float, float]:
    c = app.test_client()
    out = []
    for method, path, kw in (("POST", "/a", {"json": {"sample_id": 5, "action": "accept"}}), ("GET", "/q?n=7", {})):
        for _ in range(200):
            c.open(path, method=method, **kw)
        t0 = time.perf_counter()
        for _ in range(n):
            r = c.open(path, method=method, **kw)
            assert r.status_code == 200, (app.name, path, r.status_code, r.data[:200])
        out.append((time.perf_counter() - t0) / n * 1e6)
    return out[0], out[1]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    print(f"{n} requests per route through the Flask test client; microseconds per request (median of 3 runs)")
    print("| stack | POST json body | GET query |\n|---|---|---|")
    for name, build in (("flask, hand validation", plain), ("flask + pydantic by hand", pydantic_only),
                        ("spectree", spectree_app), ("flask-openapi3", openapi3_app),
                        ("flask-openapi3, query schema cached", openapi3_cached_app)):  # fmt: skip
        app = build()
        runs = sorted(run(app, n) for _ in range(3))
        post, get = runs[1]
        print(f"| {name} | {post:.0f} | {get:.0f} |")


if __name__ == "__main__":
    main()
