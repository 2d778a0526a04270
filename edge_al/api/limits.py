"""Per-key request rate limits (flask-limiter), one budget per key across all routes.

Configured per role with ``RATE_LIMIT_SCORER``, ``RATE_LIMIT_ANNOTATOR`` and ``RATE_LIMIT_ADMIN``
(flask-limiter strings such as ``"6000/minute"`` or ``"100/second;3000/minute"``; empty or None: no
limit). Defaults: none for scorer keys (line systems are sized by the batcher and its 503), 6,000 a
minute for annotator and admin keys, far above what a person clicks and enough to stop a runaway
script. Requests past the budget get a 429 problem with ``Retry-After``. The counts live in the
process (``RATE_LIMIT_STORAGE``, default ``memory://``; a ``redis://`` URI shares them between
processes). Public routes (health, metrics, the document, the page), requests refused by
authentication and a service without keys (``--no-auth``) are not counted: the limits are checked
after the key is known.
"""

from __future__ import annotations

from flask import Flask, current_app, request
from flask_limiter import Limiter

from .auth import current_principal

__all__ = ["LIMIT_DEFAULTS", "init_limiter"]

LIMIT_DEFAULTS = {
    "RATE_LIMIT_SCORER": None,
    "RATE_LIMIT_ANNOTATOR": "6000/minute",
    "RATE_LIMIT_ADMIN": "6000/minute",
    "RATE_LIMIT_STORAGE": "memory://",
}


def _key() -> str:
    return f"key-{current_principal().key_id}"


def _limit() -> str:
    return str(current_app.config.get(f"RATE_LIMIT_{current_principal().role.upper()}") or "")


def _exempt() -> bool:
    """Public routes, a service without keys (``--no-auth``: nobody to tell apart) and unlimited roles."""
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None or getattr(view, "required_role", "admin") is None or current_principal().key_id is None:
        return True
    return not _limit()


def init_limiter(app: Flask) -> Limiter:
    """Attach the limiter; call after the authentication hook is registered (it runs after it)."""
    for key, value in LIMIT_DEFAULTS.items():
        app.config.setdefault(key, value)
    limiter = Limiter(
        _key,
        app=app,
        application_limits=[_limit],
        application_limits_exempt_when=_exempt,
        storage_uri=str(app.config["RATE_LIMIT_STORAGE"]),
        headers_enabled=True,
        retry_after="delta-seconds",
    )
    limiter.request_filter(_exempt)  # the cheap way out: exempt requests skip the limiter's own bookkeeping
    return limiter
