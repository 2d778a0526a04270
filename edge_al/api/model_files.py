"""What scoring boxes follow: the active version's manifest and its files, for scorer keys.

``GET /v1/models/active`` names the active version and each line file (``model.xml``, ``model.bin``,
``meta.json``) with its size and SHA-256; ``GET /v1/models/<version>/files/<name>`` sends one of them
(any published version: a promote between the two calls must not break a download). A scorer key may
read these (a scoring box is a line system); reference IRs and checkpoints are never served."""

from __future__ import annotations

from flask import jsonify, request, send_file
from flask.wrappers import Response
from flask_openapi3 import APIBlueprint

from edge_al.central import Manifest, manifest_of
from edge_al.errors import NotFound

from . import service
from .auth import require
from .openapi import binary_response, op
from .schemas import ActiveManifest, ModelFilePath

__all__ = ["bp"]

bp = APIBlueprint("model_files", __name__)

_FILE = {200: binary_response("The file's bytes (ETag: its SHA-256)", ("application/octet-stream",))}


@bp.get("/v1/models/active", **op("The active version and its line files with their SHA-256 (what scoring boxes follow)", "scorer",
                                  {200: ActiveManifest}))  # fmt: skip
@require("scorer")
def active() -> Response:
    mv = service().registry.active()
    manifest = manifest_of(mv) if mv is not None else Manifest(None)
    return jsonify({"version": manifest.version, "files": [f.as_dict() for f in manifest.files]})


@bp.get("/v1/models/<version>/files/<name>", **op("One line file of a published version", "scorer", _FILE, 404, 422))
@require("scorer")
def model_file(path: ModelFilePath) -> Response:
    mv = service().registry.get(path.version)
    entry = next((f for f in manifest_of(mv).files if f.name == path.name), None)
    if entry is None:
        raise NotFound(f"Model version {path.version} has no {path.name}.")
    if request.if_none_match.contains(entry.sha256):
        resp = Response(status=304)
    else:
        resp = send_file(mv.path / path.name, mimetype="application/octet-stream", conditional=False, max_age=0)
    resp.set_etag(entry.sha256)
    return resp
