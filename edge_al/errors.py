"""Domain errors. They know nothing about HTTP; ``edge_al.api.errors`` maps them to status codes.

::

    EdgeALError
     +-- InvalidInput            bad parameter, field or file content (HTTP 422 / 400)
     |    +-- ImageError         undecodable, truncated, empty or non-image file (400)
     |    |    +-- ImageTooLarge  over the pixel or byte limit (413)
     |    +-- UnknownLabel       a label the project does not have (422)
     +-- NotFound                unknown sample, model version, job (404)
     +-- NotPermitted            the caller may not do this to someone else's work (403)
     +-- Conflict                state does not allow it (409)
     |    +-- LeaseConflict      a sample under another annotator's live lease (409)
     |    +-- ModelLoadFailed    a model version that cannot be loaded is not activated (409)
     +-- NoActiveModel           nothing to score with yet (503)
     +-- BrokerUnavailable       the job queue's broker (Redis) cannot be reached (503)
     +-- StoreUnavailable        the PostgreSQL store cannot be reached (503)
     +-- GateFailed              an export gate failed and no fallback was allowed
     +-- MissingDependency       an optional extra is not installed
 +-- CentralUnavailable      a scoring box cannot reach the central service (retry later)
 +-- CentralRefused          the central service refused a scoring box's request (4xx), or
                             answered what the box cannot use; ``status`` and ``errors`` say why
"""

from __future__ import annotations

__all__ = [
    "BrokerUnavailable",
    "CentralRefused",
    "CentralUnavailable",
    "Conflict",
    "EdgeALError",
    "GateFailed",
    "ImageError",
    "ImageTooLarge",
    "InvalidInput",
    "LeaseConflict",
    "MissingDependency",
    "ModelLoadFailed",
    "NoActiveModel",
    "NotFound",
    "NotPermitted",
    "StoreUnavailable",
    "UnknownLabel",
]


class EdgeALError(Exception):
    """Base of every error edge-al raises on purpose."""


class InvalidInput(EdgeALError):
    """A parameter, field or file does not have the expected form."""


class ImageError(InvalidInput):
    """An image that cannot be decoded: empty, truncated, corrupt or not an image."""


class ImageTooLarge(ImageError):
    """An image over the configured byte or pixel limit (decompression-bomb guard)."""


class UnknownLabel(InvalidInput):
    """A label name that is not one of the project's labels."""


class NotFound(EdgeALError):
    """A sample, model version or job that does not exist."""


class NotPermitted(EdgeALError):
    """The caller's identity does not allow this action on another's work (an annotator undoing
    someone else's decision)."""


class Conflict(EdgeALError):
    """The request conflicts with the current state."""


class LeaseConflict(Conflict):
    """A decision on a sample that another annotator holds a live lease on."""


class ModelLoadFailed(Conflict):
    """A model version could not be loaded (compiled), so it was not activated."""


class NoActiveModel(EdgeALError):
    """No model version is active yet: train and export one first."""


class BrokerUnavailable(EdgeALError):
    """The job queue's broker (Redis) did not answer; the message says what was not queued."""


class StoreUnavailable(EdgeALError):
    """The store's database server cannot be reached (a PostgreSQL store: down, or the network is)."""


class GateFailed(EdgeALError):
    """An export gate failed and no fallback was allowed."""


class MissingDependency(EdgeALError):
    """An optional dependency is missing; the message says which extra to install."""


class CentralUnavailable(EdgeALError):
    """A scoring box cannot reach the central service (network down, 5xx, 429): it keeps serving
    its last good model and retries later."""


class CentralRefused(EdgeALError):
    """The central service refused a scoring box's request (a 4xx: bad key, an image it will not
    take) or answered something unusable. ``status`` is the HTTP status (None when not HTTP);
    ``errors`` the per-item problems of a multipart request (``[{"index", "detail"}, ...]``)."""

    def __init__(self, message: str, *, status: int | None = None, errors: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.errors = list(errors or [])
