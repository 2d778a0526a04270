"""Settings come from one loader with one precedence: defaults < EDGE_AL_* environment < arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_al.api import DEFAULTS, create_app
from edge_al.config import Settings, env_values, load_settings


def test_env_values_converts_skips_empty_and_names_a_bad_variable() -> None:
    env = {"EDGE_AL_MAX_BATCH": "16", "EDGE_AL_DEVICE": "", "EDGE_AL_MAX_WAIT_MS": "2.5", "OTHER": "1"}
    assert env_values({"MAX_BATCH": int, "DEVICE": str, "MAX_WAIT_MS": float}, env) == {"MAX_BATCH": 16, "MAX_WAIT_MS": 2.5}
    with pytest.raises(ValueError, match=r"EDGE_AL_MAX_BATCH must be int\. Got 'many'"):
        env_values({"MAX_BATCH": int}, {"EDGE_AL_MAX_BATCH": "many"})


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_AL_HOME", str(tmp_path / "from-env"))
    monkeypatch.setenv("EDGE_AL_RETRAIN_AFTER", "40")
    monkeypatch.setenv("EDGE_AL_HUEY_URL", "redis://127.0.0.1:1/0")
    s = load_settings()
    assert (s.home, s.retrain_after, s.huey_url) == ((tmp_path / "from-env").resolve(), 40, "redis://127.0.0.1:1/0")
    assert s.max_pixels == Settings.max_pixels  # unset: the default
    assert load_settings(home=tmp_path / "from-arg").home == (tmp_path / "from-arg").resolve()  # the argument wins


def test_workspace_augment_comes_from_the_environment_and_a_bad_one_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(home=tmp_path).augment is None
    monkeypatch.setenv("EDGE_AL_AUGMENT", "flips+tta")
    assert load_settings(home=tmp_path).augment == "flips+tta"
    monkeypatch.setenv("EDGE_AL_AUGMENT", "rotate")
    with pytest.raises(ValueError, match=r"EDGE_AL_AUGMENT must be one of none, flips, flips\+tta\. Got 'rotate'"):
        load_settings(home=tmp_path)


def test_service_config_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_AL_MAX_BATCH", "3")
    monkeypatch.setenv("EDGE_AL_LEASE_SECONDS", "60")
    settings = load_settings(home=tmp_path)
    app = create_app(settings, {"START_MODEL": False, "JOBS": False, "LEASE_SECONDS": 30})
    assert app.config["MAX_BATCH"] == 3  # environment over the default
    assert app.config["LEASE_SECONDS"] == 30  # test_config over the environment
    assert app.config["MAX_QUEUE_N"] == DEFAULTS["MAX_QUEUE_N"]


def test_line_side_architecture_tables_agree_with_the_build_side() -> None:
    # edge_al.config restates what export/ knows, because a scoring box cannot import export/ (no
    # torch there). A new architecture or weights package added on one side only fails here.
    from edge_al import config
    from export.efficientnet_lite import LITE_WEIGHTS

    assert set(config.PACKAGED_WEIGHTS) == set(LITE_WEIGHTS)
    assert set(config.ARCH_IMAGE_SIZE) == set(LITE_WEIGHTS)
    assert set(LITE_WEIGHTS) <= set(config.ARCHS)
    assert config.DEFAULT_ARCH in config.PACKAGED_WEIGHTS
