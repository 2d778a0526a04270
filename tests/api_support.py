"""Shared by the API tests: a scored workspace, and response validation against the OpenAPI document."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import jsonschema
from flask import Flask

from edge_al.api import create_app
from edge_al.api.openapi import document
from edge_al.config import Settings
from export.tools.fixtures import DIGIT_LABELS, build_workspace

LABELS = DIGIT_LABELS  # the tiny model's classes in build_workspace
__all__ = ["LABELS", "build_workspace", "check_response", "png_header", "running_app", "template"]

_DOC = document()
_RULE_RE = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


def template(rule: str) -> str:
    """Flask rule -> OpenAPI path (``/v1/samples/<int:sample_id>`` -> ``/v1/samples/{sample_id}``)."""
    return _RULE_RE.sub(r"{\1}", rule)


def check_response(resp: Any, path: str, method: str) -> Any:
    """Validate a test-client (or requests-like) response against the document; returns the body.

    The status must be documented for the operation (or be a generic 401/403/404/405/500
    problem) and the body must match the schema of its content type.
    """
    op = _DOC["paths"][path][method.lower()]
    status = str(resp.status_code)
    spec = op["responses"].get(status)
    ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
    if spec is None:
        assert status in {"404", "405", "413", "415", "422", "500", "503"}, f"{method} {path}: undocumented status {status}"
        assert ctype == "application/problem+json", f"{method} {path} {status}: {ctype}"
        schema: dict[str, Any] = {"$ref": "#/components/schemas/Problem"}
    else:
        content = spec.get("content")
        if not content:
            return None
        if "application/json" in content or "application/problem+json" in content:
            assert ctype in content, f"{method} {path} {status}: content type {ctype} not in {list(content)}"
            schema = content[ctype]["schema"]
        else:
            return None
    body = resp.get_json() if hasattr(resp, "get_json") else resp.json()
    jsonschema.Draft202012Validator({**schema, "components": _DOC["components"]}).validate(body)
    if ctype == "application/problem+json":
        assert body["status"] == resp.status_code
        assert "Traceback" not in str(body)
    return body


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` and holds no pixels (decompression-bomb probe)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    # a few KB of zeros inflate to the first rows; a real bomb carries far more
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 65536, 9)) + chunk(b"IEND", b"")


def running_app(settings: Settings, **config: Any) -> Iterator[Flask]:
    """A fixture body: the app with its model started (no auth unless ``config`` says so), stopped after."""
    app = create_app(settings, {"AUTH_REQUIRED": False, "START_MODEL": True, **config})
    try:
        yield app
    finally:
        app.extensions["edge_al"].stop()
        app.extensions["edge_al"].store.close()
