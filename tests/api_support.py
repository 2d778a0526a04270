"""Shared by the API tests: a scored workspace, and response validation against the OpenAPI document."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path
from typing import Any

import jsonschema

from edge_al.api.openapi import document
from edge_al.config import Settings
from edge_al.pool import ingest
from edge_al.registry import Registry
from edge_al.scoring import score_pool
from edge_al.store import Store
from tests.helpers import publish_tiny, write_digit_images

LABELS = [f"d{i}" for i in range(10)]

_DOC = document()
_RULE_RE = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


def build_workspace(root: Path, n: int = 30, score: bool = True, model: bool = True) -> tuple[Settings, list[tuple[Path, str]]]:
    """A workspace with the tiny model active, ``n`` digit images ingested and (optionally) scored."""
    settings = Settings(home=root / "home")
    registry = Registry(settings.registry_dir)
    if model:
        publish_tiny(registry, LABELS)
    pairs = write_digit_images(root / "pool", n=n)
    store = Store(settings.db_path)
    try:
        for name in LABELS:
            store.add_label(name)
        ingest(store, settings, [root / "pool"])
        if score and model:
            score_pool(settings, store, registry)
    finally:
        store.close()
    return settings, pairs


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
