from __future__ import annotations

from pathlib import Path

import pytest

from edge_al.config import Settings
from edge_al.registry import Registry
from edge_al.store import Store


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def store(settings: Settings) -> Store:
    s = Store(settings.db_path)
    yield s
    s.close()


@pytest.fixture
def registry(settings: Settings) -> Registry:
    return Registry(settings.registry_dir)
