"""The central service as a scoring box sees it: where the active model comes from, where images go.

A scoring box follows one of two sources of model versions:

- :class:`HttpCentral`: the central ``edge-al serve`` over HTTP, with a scorer key.
  ``GET /v1/models/active`` gives the active version's :class:`Manifest` (each line file's name,
  size and SHA-256), ``GET /v1/models/<version>/files/<name>`` its bytes. It also delivers images
  to the central pool (``POST /v1/score?store=true``, multipart), which deduplicates them by SHA-256,
  so sending an image twice stores it once.
- :class:`FolderCentral`: the central registry folder itself, mounted on the box (NFS, SMB). It
  reads versions as the central side publishes them (whole folders renamed into place).

Both answer :meth:`active` and :meth:`download`; an unreachable source raises ``CentralUnavailable``,
a refusal (4xx) ``CentralRefused``. The manifest of a version is computed from its files
(:func:`manifest_of`) and cached per file identity, since published versions never change.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from .errors import CentralRefused, CentralUnavailable, InvalidInput, NotFound
from .registry import ModelVersion, Registry

__all__ = [
    "LINE_FILES",
    "CentralSource",
    "FileEntry",
    "FolderCentral",
    "HttpCentral",
    "Manifest",
    "copy_verified",
    "manifest_of",
    "sha256_file",
]

#: the files of a version a line runs: the IR and its meta (labels, size); never reference IRs or checkpoints
LINE_FILES = ("model.xml", "model.bin", "meta.json")
_REQUIRED = ("model.xml", "meta.json")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    """One file of a version: its name (one of ``LINE_FILES``), size in bytes and SHA-256 (hex)."""

    name: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    """The central side's active version (``None`` while none is) and its line files."""

    version: str | None
    files: tuple[FileEntry, ...] = ()

    @classmethod
    def from_json(cls, doc: Any) -> Manifest:
        """Parse ``GET /v1/models/active``; a malformed answer is ``CentralRefused`` (it is not ours to fix)."""
        try:
            version = doc["version"]
            files = tuple(FileEntry(str(f["name"]), int(f["size"]), str(f["sha256"])) for f in doc.get("files", []))
        except (KeyError, TypeError, ValueError) as exc:
            raise CentralRefused(f"The central service's model manifest is malformed ({exc!r}); expected version and files.") from None
        if version is not None and not isinstance(version, str):
            raise CentralRefused(f"The central service's active version must be a string or null. Got {version!r} instead.")
        bad = [f.name for f in files if f.name not in LINE_FILES or len(f.sha256) != 64]
        if bad or (version is not None and any(r not in {f.name for f in files} for r in _REQUIRED)):
            raise CentralRefused(f"The central service's manifest of {version} lists unexpected or missing files ({bad}).")
        return cls(version, files)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


_HASHES: dict[tuple[str, int, int], str] = {}
_HASHES_LOCK = threading.Lock()


def manifest_of(mv: ModelVersion) -> Manifest:
    """The line files of a published version with their sizes and SHA-256 (cached per path, size and
    mtime: a published version folder never changes)."""
    files = []
    for name in LINE_FILES:
        path = mv.path / name
        try:
            st = path.stat()
        except FileNotFoundError:
            if name in _REQUIRED:
                raise NotFound(f"Model version {mv.version} has no {name}: republish it (edge-al export).") from None
            continue
        key = (str(path), st.st_size, st.st_mtime_ns)
        with _HASHES_LOCK:
            digest = _HASHES.get(key)
        if digest is None:
            digest = sha256_file(path)
            with _HASHES_LOCK:
                _HASHES[key] = digest
        files.append(FileEntry(name, int(st.st_size), digest))
    return Manifest(mv.version, tuple(files))


def copy_verified(read: IO[bytes], dest: Path, entry: FileEntry) -> None:
    """Stream ``read`` into ``dest`` (fsynced), then check its size and SHA-256 against ``entry``;
    a mismatch removes ``dest`` and raises ``CentralRefused`` (a truncated or altered transfer)."""
    h = hashlib.sha256()
    size = 0
    with open(dest, "wb") as out:
        while chunk := read.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
            if size > entry.size:
                break
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if size != entry.size or h.hexdigest() != entry.sha256:
        dest.unlink(missing_ok=True)
        raise CentralRefused(
            f"{entry.name} arrived with {size} bytes and SHA-256 {h.hexdigest()[:12]}..., but the manifest says "
            f"{entry.size} bytes and {entry.sha256[:12]}...: not installed; the next poll downloads it again."
        )


class CentralSource(Protocol):
    """Where a scoring box reads model versions from."""

    def active(self) -> Manifest: ...

    def download(self, version: str, entry: FileEntry, dest: Path) -> None: ...


class FolderCentral:
    """The central registry folder, mounted on the box."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _registry(self) -> Registry:
        if not self.root.is_dir():  # an unmounted share: never create it (Registry would)
            raise CentralUnavailable("The central registry folder is not reachable (not mounted, or removed).")
        return Registry(self.root)

    def active(self) -> Manifest:
        try:
            mv = self._registry().active()
            return manifest_of(mv) if mv is not None else Manifest(None)
        except OSError as exc:
            raise CentralUnavailable(f"The central registry folder cannot be read ({type(exc).__name__}).") from None

    def download(self, version: str, entry: FileEntry, dest: Path) -> None:
        try:
            with open(self._registry().get(version).path / entry.name, "rb") as f:
                copy_verified(f, dest, entry)
        except OSError as exc:
            raise CentralUnavailable(f"{entry.name} of {version} cannot be read from the central folder ({type(exc).__name__}).") from None

    def __repr__(self) -> str:
        return "FolderCentral(<central registry folder>)"


class HttpCentral:
    """The central service over HTTP (``base_url`` like ``http://central:8000``), with a scorer key."""

    def __init__(self, base_url: str, key: str, timeout_s: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise InvalidInput(f"The central service URL must look like http://host:8000. Got {base_url!r} instead.")
        if not key:
            raise InvalidInput("A scoring box needs a scorer key of the central service (edge-al keys add --role scorer on it).")
        self.base_url = base_url.rstrip("/")
        self._key = key
        self.timeout_s = float(timeout_s)

    def __repr__(self) -> str:
        return f"HttpCentral({self.base_url!r})"  # never the key

    def _open(self, path: str, data: bytes | None = None, content_type: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self._key}"}
        if content_type:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.base_url + path, data=data, headers=headers, method="POST" if data is not None else "GET")
        try:
            return urllib.request.urlopen(req, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            body = _problem(exc)
            if exc.code >= 500 or exc.code in (408, 429):
                raise CentralUnavailable(f"The central service answered {exc.code}: {body.get('detail', '')}".strip()) from None
            raise CentralRefused(f"The central service refused {path.split('?')[0]} ({exc.code}): {body.get('detail', '')}",
                                 status=exc.code, errors=body.get("errors")) from None  # fmt: skip
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise CentralUnavailable(f"The central service is unreachable ({type(exc).__name__}: {getattr(exc, 'reason', exc)}).") from None

    def active(self) -> Manifest:
        with self._open("/v1/models/active") as resp:
            return Manifest.from_json(_json(resp.read()))

    def download(self, version: str, entry: FileEntry, dest: Path) -> None:
        try:
            with self._open(f"/v1/models/{urllib.parse.quote(version)}/files/{urllib.parse.quote(entry.name)}") as resp:
                copy_verified(resp, dest, entry)
        except (OSError, http.client.HTTPException) as exc:  # the connection dropped mid-transfer
            dest.unlink(missing_ok=True)
            raise CentralUnavailable(f"The download of {entry.name} of {version} broke off ({type(exc).__name__}).") from None

    def upload(self, images: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        """Send ``(filename, bytes)`` images to the central pool in one multipart request; returns the
        central service's result per image (``sample_id``, ``created``: false for one it already had)."""
        boundary = "edge-al-" + secrets.token_hex(16)
        body = bytearray()
        for i, (name, data) in enumerate(images):
            safe = name.replace('"', "_").replace("\r", "_").replace("\n", "_")
            body += f'--{boundary}\r\nContent-Disposition: form-data; name="image{i}"; filename="{safe}"\r\n'.encode()
            body += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        with self._open("/v1/score?store=true&top_k=1", bytes(body), f"multipart/form-data; boundary={boundary}") as resp:
            results = _json(resp.read()).get("results")
        if not isinstance(results, list) or len(results) != len(images):
            raise CentralRefused(f"The central service answered {len(results) if isinstance(results, list) else 'no'} results "
                                 f"for {len(images)} images.")  # fmt: skip
        return results


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise CentralRefused("The central service answered something that is not JSON: is the URL the edge-al service?") from None


def _problem(exc: urllib.error.HTTPError) -> dict[str, Any]:
    try:
        doc = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        return {}
    return doc if isinstance(doc, dict) else {}
