"""Scoring boxes as real processes: a central ``edge-al serve`` and ``serve --role scoring`` boxes.

The box keeps answering /v1/score while the central service is down, and after its own restart;
it serves a promote within 10 s of the central side coming back; an image it acknowledged with
``?store=true`` survives a kill -9 and reaches the central pool exactly once; an image the
central service refuses is set aside, never lost and never retried forever.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_al.box import BoxSettings
from edge_al.errors import InvalidInput
from edge_al.outbox import Outbox, OutboxFull
from edge_al.registry import Registry
from export.tools.services import Proc, central_shas, new_images, start_box, start_central, wait_for
from tests.api_support import LABELS
from tests.helpers import publish_tiny


def test_box_settings_defaults_then_environment_then_options(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("eal_from_file\n")
    env = {"EDGE_AL_CENTRAL_URL": "http://central:8000", "EDGE_AL_CENTRAL_KEY": "eal_from_env", "EDGE_AL_FOLLOW_POLL_S": "2",
           "EDGE_AL_OUTBOX_BATCH": ""}  # fmt: skip
    s = BoxSettings.load(environ=env)
    assert (s.central_url, s.central_key, s.poll_s, s.outbox_batch) == ("http://central:8000", "eal_from_env", 2.0, 16)
    s = BoxSettings.load({"poll_s": 0.5, "central_key_file": str(key), "central_url": None}, environ=env)
    assert (s.central_url, s.central_key, s.poll_s) == ("http://central:8000", "eal_from_file", 0.5)
    assert "eal_" not in repr(s)
    for overrides, message in (
        ({"central_url": None}, "give --central URL"),
        ({"central_key": ""}, "needs a scorer key"),
        ({"poll_s": 0}, "'poll_s' setting must be a number in"),
        ({"central_key_file": str(tmp_path / "missing")}, "key file cannot be read"),
    ):
        environ = {} if overrides.get("central_url", 1) is None else env
        with pytest.raises(InvalidInput, match=message):
            BoxSettings.load(overrides, environ=environ)


def test_outbox_is_durable_deduplicated_bounded_and_sweeps_torn_writes(tmp_path: Path) -> None:
    images = new_images(3, seed=11)
    box = Outbox(tmp_path / "outbox", max_bytes=len(images[0]) + len(images[1]))
    a, b = box.put(images[0], "PNG"), box.put(images[1], "PNG")
    assert box.put(images[0], "PNG") == a and box.stats()["pending"] == 2  # the same image is one file
    with pytest.raises(OutboxFull, match="EDGE_AL_OUTBOX_MAX_BYTES"):
        box.put(images[2], "PNG")
    (tmp_path / "outbox" / ".torn.png.tmp").write_bytes(b"half")  # a write cut short by a kill: never acknowledged
    again = Outbox(tmp_path / "outbox")  # after a restart: the same queue, oldest first
    assert [p.sha256 for p in again.peek(5)] == [a, b] and not (tmp_path / "outbox" / ".torn.png.tmp").exists()
    again.reject(again.peek(1)[0], "refused")
    again.done(again.peek(1), [False])
    assert again.stats() | {"max_bytes": 0} == {"pending": 0, "pending_bytes": 0, "max_bytes": 0, "delivered": 0, "duplicates": 1,
                                                 "rejected": 1}  # fmt: skip
    assert (tmp_path / "outbox" / "rejected" / f"{a}.png").read_bytes() == images[0]


def _serving(box: Proc) -> str | None:
    status, doc = box.call("GET", "/v1/box", timeout=5)
    assert status == 200, doc
    return doc["serving"]  # type: ignore[no-any-return]


def _box(box: Proc) -> dict:  # type: ignore[type-arg]
    return box.call("GET", "/v1/box", timeout=5)[1]  # type: ignore[no-any-return]


def test_box_scores_through_an_outage_and_its_own_restart_and_follows_a_promote_within_10_s(tmp_path: Path) -> None:
    central, settings, keys = start_central(tmp_path / "central")
    box = start_box(tmp_path / "box", central, keys["scorer"])
    png = new_images(1, seed=1)[0]
    try:
        wait_for("the box to serve v0001", lambda: _serving(box) == "v0001")
        assert box.score(png)[1]["model_version"] == "v0001"
        # the central side goes down hard; the box notices and keeps answering
        central.kill9()
        wait_for("the box to see the central side down", lambda: _box(box)["central"]["reachable"] is False)
        for _ in range(10):
            status, doc = box.score(png)
            assert status == 200 and doc["model_version"] == "v0001", doc
        # meanwhile v0002 is published and promoted on the central side (edge-al promote, on its disk)
        registry = Registry(settings.registry_dir)
        publish_tiny(registry, LABELS, seed=7, promote=False)
        registry.promote("v0002")
        # the box restarts while the central side is still down: it serves its local copy
        assert box.stop() == 0
        box.start()
        assert _serving(box) == "v0001" and box.score(png)[1]["model_version"] == "v0001"
        # the central side comes back: the box serves v0002 within 10 s
        central.start()
        t_up = time.monotonic()
        wait_for("the box to serve v0002", lambda: _serving(box) == "v0002", timeout=30)
        picked_up = time.monotonic() - t_up
        assert picked_up < 10.0, picked_up
        status, doc = box.score(png)
        assert status == 200 and doc["model_version"] == "v0002" and doc["results"][0]["model_version"] == "v0002"
        # a rollback on the central side is followed too, from the box's local copy
        assert central.call("POST", "/v1/models/rollback")[0] == 200
        wait_for("the box to follow the rollback", lambda: _serving(box) == "v0001", timeout=30)
        local = Registry(tmp_path / "box" / "home" / "models")
        assert [mv.version for mv in local.versions()] == ["v0001", "v0002"]
        for name in ("model.xml", "model.bin"):  # the box runs byte for byte what the central side published
            assert (local.get("v0002").path / name).read_bytes() == (registry.get("v0002").path / name).read_bytes()
        assert not (tmp_path / "box" / "home" / "edge-al.sqlite3").exists()  # no store of the loop on the box
    finally:
        box.stop()
        central.stop()


def test_buffered_uploads_survive_kill_9_and_reach_the_pool_exactly_once(tmp_path: Path) -> None:
    central, settings, keys = start_central(tmp_path / "central")
    box = start_box(tmp_path / "box", central, keys["scorer"], env={"EDGE_AL_OUTBOX_BATCH": "1"})
    images = new_images(30, seed=2)
    shas = {hashlib.sha256(b).hexdigest() for b in images}
    outbox = tmp_path / "box" / "home" / "outbox"
    try:
        wait_for("the box to serve v0001", lambda: _serving(box) == "v0001")
        central.kill9()
        for png in images:
            status, doc = box.score(png, store=True)
            assert status == 200 and doc["results"][0]["queued"] is True, doc
        assert box.score(images[0], store=True)[1]["results"][0]["queued"] is True  # the same image again: one file
        assert {p.name.split(".")[0] for p in outbox.glob("*.png")} == shas
        box.kill9()  # acknowledged, then killed: the files are on disk
        before = len(central_shas(settings))
        central.start()
        box.start()
        # killed again in the middle of delivery (one image per request): some sent, some not
        wait_for("the first deliveries", lambda: 0 < len(set(central_shas(settings)) & shas) < len(shas), every=0.01)
        box.kill9()
        box.start()
        wait_for("the outbox to empty", lambda: _box(box)["outbox"]["pending"] == 0)
        after = central_shas(settings)
        assert len(after) == before + len(shas) and shas <= set(after) and len(set(after)) == len(after), "each image once"
        assert not list(outbox.glob("*.png")) and _box(box)["outbox"]["rejected"] == 0
    finally:
        box.stop()
        central.stop()


def test_an_image_the_central_side_refuses_is_set_aside_not_lost(tmp_path: Path) -> None:
    small, large = new_images(1, seed=3, size=16)[0], new_images(1, seed=4, size=256)[0]
    # the central service takes smaller files than the box: it will refuse `large` for good
    central, settings, keys = start_central(tmp_path / "central", env={"EDGE_AL_MAX_FILE_BYTES": str(len(large) - 1)})
    box = start_box(tmp_path / "box", central, keys["scorer"])
    try:
        wait_for("the box to serve v0001", lambda: _serving(box) == "v0001")
        for png in (large, small):
            assert box.score(png, store=True)[1]["results"][0]["queued"] is True
        wait_for("the outbox to settle", lambda: _box(box)["outbox"]["pending"] == 0)
        assert _box(box)["outbox"]["rejected"] == 1
        assert hashlib.sha256(small).hexdigest() in central_shas(settings)
        rejected = tmp_path / "box" / "home" / "outbox" / "rejected"
        kept = rejected / f"{hashlib.sha256(large).hexdigest()}.png"
        assert kept.read_bytes() == large and "413" in (rejected / (kept.name + ".reason")).read_text()
        # bad input to the box: a clear error, nothing queued; a wrong key: 401
        status, doc = box.call("POST", "/v1/score?store=true", b"not an image", "image/png")
        assert status == 400 and doc["type"].endswith("undecodable-image") and _box(box)["outbox"]["pending"] == 0
        assert box.call("POST", "/v1/score", small, "image/png", key="eal_wrong")[0] == 401
        assert box.call("GET", "/v1/models", timeout=5)[0] == 404  # the box serves scoring only
    finally:
        box.stop()
        central.stop()


@pytest.mark.parametrize(("bad", "named"), [({"EDGE_AL_FOLLOW_POLL_S": "soon"}, "EDGE_AL_FOLLOW_POLL_S"),
                                             ({"EDGE_AL_UPLOAD_FRACTION": "2"}, "'upload_fraction' setting")])  # fmt: skip
def test_bad_box_settings_are_refused_at_start(tmp_path: Path, bad: dict[str, str], named: str) -> None:
    key = tmp_path / "k"
    key.write_text("eal_x\n")
    cmd = [sys.executable, "-m", "edge_al", "--home", str(tmp_path / "h"), "serve", "--role", "scoring", "--port", "1",
           "--central", "http://127.0.0.1:1", "--central-key-file", str(key)]  # fmt: skip
    done = subprocess.run(cmd, env={**os.environ, **bad}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and named in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_box_follows_a_mounted_registry_folder_and_sends_nothing(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "shared" / "models")  # the central registry, as the box sees it mounted
    publish_tiny(registry, LABELS)
    box = start_box(tmp_path / "box", None, "eal_line3", folder=registry.root)
    png = new_images(1, seed=5)[0]
    try:
        wait_for("the box to serve v0001", lambda: _serving(box) == "v0001")
        publish_tiny(registry, LABELS, seed=9)  # published and promoted on the central side
        wait_for("the box to serve v0002", lambda: _serving(box) == "v0002")
        assert box.score(png)[1]["model_version"] == "v0002"
        status, doc = box.score(png, store=True)
        assert status == 409 and "sends images nowhere" in doc["detail"]
        assert _box(box)["outbox"] is None
    finally:
        box.stop()
