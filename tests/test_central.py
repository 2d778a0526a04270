"""What scoring boxes follow on the central side: the active manifest and file routes (scorer keys),
and the client helpers (manifest parsing, verified copies, the shared-folder source)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from edge_al.api import create_app
from edge_al.api.auth import create_key
from edge_al.central import FileEntry, FolderCentral, Manifest, copy_verified, manifest_of
from edge_al.errors import CentralRefused, CentralUnavailable
from edge_al.registry import Registry
from edge_al.store import open_store
from tests.api_support import LABELS, build_workspace, check_response
from tests.helpers import publish_tiny


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Flask, dict[str, str]]]:
    settings, _ = build_workspace(tmp_path_factory.mktemp("central"), n=4, score=False)
    store = open_store(settings)
    keys = {role: create_key(store, role, f"{role}-1")[1] for role in ("scorer", "annotator")}
    store.close()
    app = create_app(settings, {"START_MODEL": False, "JOBS": False})
    yield app, keys
    app.extensions["edge_al"].store.close()


def test_a_scorer_key_reads_the_active_manifest_and_downloads_each_file(central: tuple[Flask, dict[str, str]]) -> None:
    app, keys = central
    client = app.test_client()
    auth = {"Authorization": f"Bearer {keys['scorer']}"}
    r = client.get("/v1/models/active", headers=auth)
    doc = check_response(r, "/v1/models/active", "GET")
    assert doc["version"] == "v0001" and [f["name"] for f in doc["files"]] == ["model.xml", "model.bin", "meta.json"]
    for f in doc["files"]:
        got = client.get(f"/v1/models/v0001/files/{f['name']}", headers=auth)
        assert got.status_code == 200 and got.headers["ETag"] == f'"{f["sha256"]}"'
        assert len(got.data) == f["size"] and hashlib.sha256(got.data).hexdigest() == f["sha256"]
        again = client.get(f"/v1/models/v0001/files/{f['name']}", headers={**auth, "If-None-Match": f'"{f["sha256"]}"'})
        assert again.status_code == 304 and not again.data


def test_only_line_files_of_published_versions_are_served(central: tuple[Flask, dict[str, str]]) -> None:
    app, keys = central
    client = app.test_client()
    auth = {"Authorization": f"Bearer {keys['scorer']}"}
    for name in ("reference.xml", "checkpoint.pt", "..%2Fregistry.json"):
        r = client.get(f"/v1/models/v0001/files/{name}", headers=auth)
        assert r.status_code in (404, 422), (name, r.status_code)
    missing = client.get("/v1/models/v0099/files/model.xml", headers=auth)
    body = check_response(missing, "/v1/models/{version}/files/{name}", "GET")
    assert missing.status_code == 404 and "v0099" in body["detail"] and str(app.extensions["edge_al"].settings.home) not in body["detail"]
    assert client.get("/v1/models/active", headers={"Authorization": f"Bearer {keys['annotator']}"}).status_code == 403
    assert client.get("/v1/models/active").status_code == 401


def test_manifest_parsing_refuses_what_a_box_cannot_install() -> None:
    ok = {
        "version": "v0002",
        "files": [{"name": "model.xml", "size": 3, "sha256": "a" * 64}, {"name": "meta.json", "size": 2, "sha256": "b" * 64}],
    }
    assert Manifest.from_json(ok).version == "v0002"
    assert Manifest.from_json({"version": None, "files": []}) == Manifest(None)
    for bad in ({"files": []}, {"version": 3, "files": []}, {"version": "v0002", "files": [{"name": "model.xml", "size": 3, "sha256": "a" * 64}]},
                {"version": "v0002", "files": [*ok["files"], {"name": "../x", "size": 1, "sha256": "c" * 64}]}, ["not", "a", "dict"]):  # fmt: skip
        with pytest.raises(CentralRefused):
            Manifest.from_json(bad)


def test_a_copy_that_does_not_match_the_manifest_is_removed(tmp_path: Path) -> None:
    data = b"model bytes"
    entry = FileEntry("model.bin", len(data), hashlib.sha256(data).hexdigest())
    copy_verified(io.BytesIO(data), tmp_path / "ok.bin", entry)
    assert (tmp_path / "ok.bin").read_bytes() == data
    for wrong in (data[:-1], data + b"!", b"MODEL bytes"):
        with pytest.raises(CentralRefused, match="the next poll downloads it again"):
            copy_verified(io.BytesIO(wrong), tmp_path / "bad.bin", entry)
        assert not (tmp_path / "bad.bin").exists()


def test_the_folder_source_reads_the_central_registry_and_says_when_it_is_gone(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models")
    mv = publish_tiny(registry, LABELS)
    source = FolderCentral(tmp_path / "models")
    manifest = source.active()
    assert manifest == manifest_of(mv) and manifest.version == "v0001"
    entry = next(f for f in manifest.files if f.name == "model.bin")
    source.download("v0001", entry, tmp_path / "model.bin")
    assert (tmp_path / "model.bin").read_bytes() == (mv.path / "model.bin").read_bytes()
    with pytest.raises(CentralUnavailable):
        FolderCentral(tmp_path / "not-mounted").active()
    assert not (tmp_path / "not-mounted").exists()  # never created on the box
