"""waitress, with the service's limits applied before a request body is read.

waitress reads a whole request body before it calls the app, so checks made in the app come too
late to save the reading. Here they are made when the headers are complete:

- the body limit is the app's ``MAX_CONTENT_LENGTH`` (waitress's own default is 1 GiB);
- a request with a body to a route that needs a key, sent without a valid key (or with a key
  lacking the role), is answered 401/403 at once and its body is never read;
- a request refused at that point never gets ``100 Continue``, so a client that asked
  (``Expect: 100-continue``) does not send the body at all;
- waitress's own refusals (413, 400, 431, 501) come as ``application/problem+json`` like the app's.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask
from waitress import create_server as _waitress_server
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.utilities import Error
from werkzeug.exceptions import HTTPException

from .auth import KeySource, authenticate, has_role
from .errors import PROBLEM_MIME, TYPE_BASE

__all__ = ["create_server", "early_problem"]

log = logging.getLogger(__name__)


class _ProblemError(Error):
    """A waitress error answered as RFC 9457 problem details."""

    def __init__(self, code: int, reason: str, detail: str, slug: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.code, self.reason, self.slug, self.headers = code, reason, slug, headers or {}

    def to_response(self, ident: str | None = None) -> tuple[str, list[tuple[str, str]], bytes]:
        body = {"type": TYPE_BASE + self.slug, "title": self.reason, "status": self.code, "detail": self.body}
        return f"{self.code} {self.reason}", [("Content-Type", PROBLEM_MIME), *self.headers.items()], json.dumps(body).encode()


_WAITRESS_SLUGS = {400: "bad-request", 413: "content-too-large", 431: "header-fields-too-large", 501: "not-implemented"}


def _presented(headers: dict[str, str]) -> str | None:
    scheme, _, value = headers.get("AUTHORIZATION", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("X_API_KEY", "").strip() or None


def early_problem(app: Flask, store: KeySource, method: str, path: str, headers: dict[str, str]) -> _ProblemError | None:
    """The 401/403 the app would answer this request, decided from its headers alone (None: let it in)."""
    if not app.config.get("AUTH_REQUIRED", True):
        return None
    try:
        endpoint, _ = app.url_map.bind("localhost").match(path, method)
    except HTTPException:  # 404/405: deny by default under /v1, as the app does for views that declare nothing
        endpoint = None
    view = app.view_functions.get(endpoint or "")
    role = getattr(view, "required_role", "admin") if view is not None else ("admin" if path.startswith("/v1/") else None)
    if role is None:
        return None
    token = _presented(headers)
    challenge = {"WWW-Authenticate": 'Bearer realm="edge-al"'}
    if token is None:
        return _ProblemError(401, "Unauthorized", "This route needs an API key: send 'Authorization: Bearer <key>' or "
                             "'X-API-Key: <key>'. The body was not read.", "missing-api-key", challenge)  # fmt: skip
    principal = authenticate(store, token)
    if principal is None:
        return _ProblemError(401, "Unauthorized", "The API key is not valid (unknown or revoked). The body was not read.",
                             "invalid-api-key", challenge)  # fmt: skip
    if not has_role(principal, role):
        return _ProblemError(403, "Forbidden", f"This route needs the {role!r} role; the key has {principal.role!r}. "
                             "The body was not read.", "wrong-role")  # fmt: skip
    return None


def _early_or_none(app: Flask, store: KeySource, parser: Any) -> _ProblemError | None:
    """:func:`early_problem`, or None when it cannot decide (the app then checks as usual)."""
    try:
        return early_problem(app, store, parser.command, parser.path, parser.headers)
    except Exception:  # this runs in waitress's I/O thread: never let it take the loop down
        log.exception("header-time check failed; the app checks the request instead")
        return None


def _channel_class(app: Flask, store: KeySource) -> type[HTTPChannel]:
    class Parser(HTTPRequestParser):
        checked = False  # the header-time check runs once, not once per body chunk

        def received(self, data: bytes) -> int:
            n: int = super().received(data)
            state: Any = self
            if state.headers_finished and not self.checked:
                self.checked = True
                if state.error is None and not state.completed and (state.content_length > 0 or state.chunked):
                    state.error = _early_or_none(app, store, state)
                    state.completed = state.error is not None
            if state.error is not None:
                state.expect_continue = False  # no "100 Continue" for a request that is refused
                if not isinstance(state.error, _ProblemError):
                    code = int(state.error.code)
                    state.error = _ProblemError(code, state.error.reason, str(state.error.body), _WAITRESS_SLUGS.get(code, "error"))
            return n

    class Channel(HTTPChannel):
        parser_class = Parser

    return Channel


def create_server(app: Flask, **kwargs: Any) -> Any:
    """``waitress.create_server`` for ``app`` with its body limit and the header-time checks."""
    limit = int(app.config.get("MAX_CONTENT_LENGTH") or 0)
    if limit:
        kwargs.setdefault("max_request_body_size", limit + 1)  # waitress refuses bodies of >= this size
    server = _waitress_server(app, **kwargs)
    svc = app.extensions["edge_al"]
    keys = getattr(svc, "keys", None) or svc.store  # a scoring box checks its own key; the service its store's
    server.channel_class = _channel_class(app, keys)
    return server
