from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_al.cli import main
from edge_al.config import Settings
from edge_al.errors import Conflict, ModelLoadFailed, NotFound
from edge_al.registry import ModelVersion, Registry
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


def test_promote_loads_first_and_changes_nothing_when_that_fails(registry: Registry) -> None:
    v1 = publish_tiny(registry, ["a", "b"])
    v2 = publish_tiny(registry, ["a", "b"], seed=1, promote=False)
    loaded: list[str] = []

    def refuse(mv: ModelVersion) -> None:
        loaded.append(mv.version)
        raise RuntimeError(f"cannot read {mv.xml}")

    with pytest.raises(ModelLoadFailed, match=f"{v2.version} cannot be loaded .*{v1.version} stays active") as info:
        registry.promote(v2.version, load=refuse)
    assert str(registry.root) not in str(info.value) and "<models>" in str(info.value)
    assert loaded == [v2.version] and registry.active_version() == v1.version
    registry.promote(v2.version, load=loaded.append)
    assert registry.active_version() == v2.version
    with pytest.raises(ModelLoadFailed):
        registry.rollback(load=refuse)
    assert registry.active_version() == v2.version
    assert registry.rollback(load=loaded.append).version == v1.version


def test_cli_promote_refuses_a_version_that_cannot_load(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    registry = Registry(settings.registry_dir)
    publish_tiny(registry, ["a", "b"])
    broken = publish_tiny(registry, ["a", "b"], seed=1, promote=False)
    (broken.path / "model.xml").write_text("<not a model/>")
    assert main(["--home", str(settings.home), "promote", broken.version]) == 1
    err = capsys.readouterr().err
    assert "v0002 cannot be loaded" in err and str(settings.home) not in err
    assert registry.active_version() == "v0001"
