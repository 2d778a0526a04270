from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_al.errors import Conflict, NotFound
from edge_al.registry import Registry
from tests.helpers import publish_tiny


def test_publish_promote_rollback(registry: Registry) -> None:
    v1 = publish_tiny(registry, ["a", "b"])
    v2 = publish_tiny(registry, ["a", "b"], seed=1, promote=False)
    assert [m.version for m in registry.versions()] == ["v0001", "v0002"]
    assert registry.active_version() == v1.version
    registry.promote(v2.version)
    assert registry.active_version() == "v0002"
    assert registry.rollback().version == "v0001"
    with pytest.raises(Conflict):
        registry.rollback()
    with pytest.raises(NotFound):
        registry.promote("v0099")


def test_interrupted_publish_leaves_registry_usable(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    v1 = publish_tiny(registry, ["a", "b"])
    real_rename = os.rename

    def crash(src: object, dst: object) -> None:
        if str(src).find(".staging-") >= 0:
            raise OSError("simulated crash mid-publish")
        real_rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="simulated"):
        publish_tiny(registry, ["a", "b"], seed=2)
    monkeypatch.undo()
    assert [m.version for m in registry.versions()] == [v1.version]  # no half version
    assert registry.active_version() == v1.version
    # the next publish still works and takes a fresh number
    v3 = publish_tiny(registry, ["a", "b"], seed=3)
    assert v3.version not in {v1.version} and registry.active_version() == v3.version


def test_stale_staging_is_swept(registry: Registry) -> None:
    stale = registry.root / ".staging-old"
    stale.mkdir()
    os.utime(stale, (0, 0))
    registry.staging()
    assert not stale.exists()


def test_corrupt_state_file_is_not_silently_ignored(registry: Registry, tmp_path: Path) -> None:
    publish_tiny(registry, ["a", "b"])
    assert (registry.root / "registry.json").exists()
    assert not list(registry.root.glob(".registry.json.*"))  # atomic write left no temp files
