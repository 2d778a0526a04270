"""The annotation page: ``/`` serves index.html, ``/static/<path>`` its assets (no key needed).

Everything is plain HTML, CSS and JavaScript shipped inside the package: no CDN, no external
fonts, no front-end build step. The page itself asks for an annotator key and sends it as
``Authorization: Bearer <key>`` on every ``/v1`` call.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

from .auth import public

__all__ = ["STATIC_DIR", "bp"]

STATIC_DIR = Path(__file__).resolve().parent / "static"

bp = Blueprint("ui", __name__)


def _no_store(resp: Response) -> Response:
    # A redeployed service must never leave an annotator on a stale page or script.
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


@bp.get("/")
@public
def index() -> Response:
    resp = send_from_directory(STATIC_DIR, "index.html", max_age=0)
    resp.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    resp.headers["Referrer-Policy"] = "no-referrer"
    return _no_store(resp)


@bp.get("/static/<path:filename>")
@public
def static(filename: str) -> Response:
    # send_from_directory rejects paths that leave STATIC_DIR (404), so "../" cannot escape.
    return _no_store(send_from_directory(STATIC_DIR, filename, max_age=0))
