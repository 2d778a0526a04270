"""Where pool images live, addressed so that any box can read them: one interface over fsspec.

A :class:`Storage` has a root: a folder (``/srv/edge-al/images``, ``file:///srv/...``, an NFS or SMB
mount) or an fsspec URL (``s3://bucket/images`` where s3fs is installed, ``memory://images`` in
tests). The store keeps *refs*, paths relative to that root with ``/`` separators
(``blobs/ab/ab12....jpg``, ``line3/2024-05-01/0001.png``), so each box reaches the same image through
its own ``EDGE_AL_IMAGES`` (a mount point may differ from box to box) and no row holds a path that
only one machine knows.

Rows written before refs, and files ingested from outside the root on a single box without
``EDGE_AL_IMAGES``, hold an absolute path or a URL: those are read as they are (no migration).

Reading and writing raise ``OSError`` (``FileNotFoundError`` for a missing object) whatever the
backend; a ref that climbs out of the root (``..``) is ``InvalidInput``.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path, PurePosixPath
from typing import Any

from .config import Settings
from .errors import InvalidInput, MissingDependency

__all__ = ["Storage", "images_storage", "is_ref", "upload_ref"]

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_UPLOAD_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


def is_ref(text: str) -> bool:
    """True for a ref relative to a storage root; False for an absolute path or a URL (an old row)."""
    return not (_SCHEME.match(text) or PurePosixPath(text).is_absolute() or Path(text).is_absolute())


def upload_ref(sha256: str, image_format: str) -> str:
    """The content-addressed ref of an image's bytes: ``blobs/<2 hex>/<sha256><suffix>``."""
    return f"blobs/{sha256[:2]}/{sha256}{_UPLOAD_SUFFIX.get(image_format, '.img')}"


def _check_ref(ref: str) -> str:
    parts = PurePosixPath(ref).parts
    if not ref or ".." in parts or "\\" in ref or "\x00" in ref:
        raise InvalidInput(f"A storage ref is a relative path inside the images root without '..'. Got {ref!r} instead.")
    return ref


class Storage:
    """Images under one root (a folder or an fsspec URL); ``read_bytes``/``write_bytes`` by ref."""

    def __init__(self, root: str | Path) -> None:
        import fsspec

        text = str(root)
        try:
            fs, path = fsspec.core.url_to_fs(text)
        except ImportError as exc:  # a known protocol whose package is absent (s3fs, gcsfs, ...)
            raise MissingDependency(f"The images root {text!r} needs a package that is not installed: {exc}.") from None
        except ValueError as exc:  # an unknown protocol
            raise InvalidInput(
                f"EDGE_AL_IMAGES must be a folder or an fsspec URL (s3://, memory://, ...). Got {text!r} instead ({exc})."
            ) from None
        self.fs: Any = fs
        self.is_local = "file" in _protocols(fs)
        self.root = str(Path(path).resolve()) if self.is_local else path.rstrip("/")
        self.url = self.root if self.is_local else f"{_protocols(fs)[0]}://{self.root}"

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    # -- addressing ------------------------------------------------------------------------------
    def ref_for(self, path: str | Path) -> str | None:
        """The ref of a local ``path`` inside this (local) root, or None when it is outside it."""
        if not self.is_local:
            return None
        try:
            rel = Path(path).expanduser().resolve().relative_to(self.root)
        except ValueError:
            return None
        return rel.as_posix()

    def location(self, ref: str) -> str:
        """Where a ref lives, for people and for readers outside edge-al: a local path or a URL.
        An old row's absolute path or URL is returned as it is."""
        if not is_ref(ref):
            return ref
        _check_ref(ref)
        return str(Path(self.root) / ref) if self.is_local else f"{self.url}/{ref}"

    # -- reading and writing ---------------------------------------------------------------------
    def read_bytes(self, ref: str) -> bytes:
        where = self.location(ref)
        if not _SCHEME.match(where):
            return Path(where).read_bytes()
        import fsspec

        try:
            with fsspec.open(where, "rb") as f:
                data: bytes = f.read()
        except OSError:
            raise
        except Exception as exc:  # backends raise their own errors: one kind for the callers
            raise OSError(f"{type(exc).__name__}: {exc}") from exc
        return data

    def exists(self, ref: str) -> bool:
        where = self.location(ref)
        if not _SCHEME.match(where):
            return Path(where).exists()
        import fsspec

        fs, path = fsspec.core.url_to_fs(where)
        return bool(fs.exists(path))

    def write_bytes(self, ref: str, data: bytes) -> str:
        """Store ``data`` at ``ref`` (a crash leaves the old object or the new one, never a torn one:
        a local file is written beside and renamed, an object store writes whole objects); returns ``ref``."""
        _check_ref(ref)
        if self.is_local:
            from .fsutil import atomic_write

            atomic_write(Path(self.root) / ref, lambda f: f.write(data))
            return ref
        path = posixpath.join(self.root, ref)
        try:
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            self.fs.pipe_file(path, data)
        except OSError:
            raise
        except Exception as exc:
            raise OSError(f"{type(exc).__name__}: {exc}") from exc
        return ref


def images_storage(settings: Settings) -> Storage:
    """The storage of the workspace's pool images: ``EDGE_AL_IMAGES``, else the workspace folder."""
    return Storage(settings.images or settings.home)


def _protocols(fs: Any) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)
