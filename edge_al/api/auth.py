"""API keys with roles, stored hashed in the workspace's SQLite store.

Roles: ``scorer`` (line systems: POST /v1/score), ``annotator`` (queue, annotations, samples,
images, labels, stats) and ``admin`` (everything: models, jobs, labels, keys). ``admin``
implies both other roles; ``scorer`` and ``annotator`` imply nothing of each other, so a
line system's key cannot read the pool and an annotator's key cannot drive the scorer.

A key is ``eal_`` + 43 url-safe characters (32 random bytes). Only its SHA-256 is stored: a
salt or a slow hash buys nothing for a 256-bit random secret. Presented keys are compared
against every stored hash with ``hmac.compare_digest`` (no early exit), so the time taken
says nothing about which key, if any, matched. Keys travel as ``Authorization: Bearer <key>``
or ``X-API-Key: <key>``; missing or unknown: 401; a known key without the role: 403.

Identity: an annotator key is issued to a person (``keys add --role annotator --name NAME``).
Its requests act as that name: decisions are recorded under it, leases belong to it, and an
``annotator`` field or parameter it sends is ignored (``Principal.acting_as``). Only an admin
key acts for a named annotator (imports, the single-user ``--no-auth`` page). Line systems use
scorer keys, which reach only ``/v1/score``.

Views declare what they need with ``@require("annotator")``; ``@public`` marks a view that
needs no key. Under ``/v1`` a view that declares nothing needs ``admin`` (deny by default);
outside ``/v1`` (the annotation page, health, metrics) views are public.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from flask import current_app, g, request

from edge_al.errors import InvalidInput
from edge_al.store import Store

from .errors import Problem

__all__ = [
    "ROLES",
    "KeySource",
    "Principal",
    "authenticate",
    "check_request",
    "create_key",
    "current_principal",
    "has_role",
    "list_keys",
    "public",
    "require",
    "revoke_key",
]

ROLES = ("scorer", "annotator", "admin")


class StoredKey(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def key_hash(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def name(self) -> str: ...


class KeySource(Protocol):
    """Where presented keys are checked: the workspace's ``Store``, or a scoring box's own keys."""

    def api_keys(self, include_revoked: bool = True) -> Sequence[StoredKey]: ...


_PREFIX = "eal_"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id (None when auth is off), role and name."""

    key_id: int | None
    role: str
    name: str

    @property
    def holder(self) -> str:
        """A stable identity for leases and annotations when the caller names none."""
        if self.key_id is None:
            return self.name
        return self.name or f"key-{self.key_id}"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def acting_as(self, requested: str | None) -> str:
        """The annotator a request acts as: an admin may name anyone (``requested``, else its own
        holder); every other key acts as its own holder, and a name it sends is ignored."""
        name = (requested or "").strip()[:128]
        return name if (self.is_admin and name) else self.holder


ANONYMOUS = Principal(None, "admin", "local")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"The 'role' parameter must be one of {', '.join(ROLES)}. Got {role!r} instead.")
    return role


def create_key(store: Store, role: str, name: str = "") -> tuple[int, str]:
    """Create a key; returns ``(id, token)``. The token is shown once and never stored.

    An annotator key is issued to a person and needs their ``name``: decisions and leases are
    recorded under it. Several keys may share a name (a person's new key before the old one is
    revoked); they then act as the same annotator."""
    _check_role(role)
    name = (name or "").strip()
    if len(name) > 128 or not name.isprintable():
        raise InvalidInput(f"A key name must be at most 128 printable characters. Got {name!r} instead.")
    if role == "annotator" and not name:
        raise InvalidInput("An annotator key is issued to a person: give their name (--name NAME); decisions are recorded under it.")
    token = _PREFIX + secrets.token_urlsafe(32)
    return store.add_api_key(_hash(token), role, name), token


def list_keys(store: Store, include_revoked: bool = True) -> list[dict[str, Any]]:
    """Keys without their secrets: id, role, name, created_at, revoked."""
    return [
        {"id": k.id, "role": k.role, "name": k.name, "created_at": k.created_at, "revoked": k.revoked}
        for k in store.api_keys(include_revoked=include_revoked)
    ]


def revoke_key(store: Store, key_id: int) -> bool:
    """Revoke a key; returns False when it was already revoked. Unknown id: NotFound."""
    return store.revoke_api_key(key_id)


def authenticate(store: KeySource, token: str) -> Principal | None:
    """The principal of a presented token, or None. Constant time in which key matches."""
    if not token:
        return None
    presented = _hash(token)
    found: Principal | None = None
    for k in store.api_keys(include_revoked=False):
        if hmac.compare_digest(presented, k.key_hash):
            found = Principal(k.id, k.role, k.name)
    return found


def has_role(principal: Principal, role: str) -> bool:
    return principal.role == "admin" or principal.role == role


def require(role: str) -> Callable[[F], F]:
    """Mark a view as needing ``role`` (admin always passes)."""
    _check_role(role)

    def mark(view: F) -> F:
        view.required_role = role  # type: ignore[attr-defined]
        return view

    return mark


def public(view: F) -> F:
    """Mark a view as needing no key."""
    view.required_role = None  # type: ignore[attr-defined]
    return view


def _presented_token() -> str | None:
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = request.headers.get("X-API-Key", "").strip()
    return key or None


def _required_role() -> str | None:
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None:
        return None
    if hasattr(view, "required_role"):
        role: str | None = view.required_role
        return role
    return "admin" if request.path.startswith("/v1/") else None


def check_request(store: KeySource, auth_required: bool) -> None:
    """The ``before_request`` hook: sets ``g.principal`` or raises a 401/403 Problem."""
    g.principal = ANONYMOUS
    if request.routing_exception is not None:  # 404/405 come from routing, not auth
        return
    role = _required_role()
    if role is None:
        return
    if not auth_required:
        return
    token = _presented_token()
    challenge = {"WWW-Authenticate": 'Bearer realm="edge-al"'}
    if token is None:
        raise Problem(401, "This route needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
                      slug="missing-api-key", headers=challenge)  # fmt: skip
    principal = authenticate(store, token)
    if principal is None:
        raise Problem(401, "The API key is not valid (unknown or revoked).", slug="invalid-api-key",
                      headers={"WWW-Authenticate": 'Bearer realm="edge-al", error="invalid_token"'})  # fmt: skip
    if not has_role(principal, role):
        raise Problem(403, f"This route needs the {role!r} role; the key {principal.holder!r} has {principal.role!r}.", slug="wrong-role")
    g.principal = principal


def current_principal() -> Principal:
    p: Principal = getattr(g, "principal", ANONYMOUS)
    return p
