"""The annotation page in a real headless browser (Debian's chromium driven by Playwright) against
the real server (`edge-al serve` in a subprocess) on a workspace built with a tiny OpenVINO model.

Keyboard only: sign in, accept (Enter), correct (a number), reject (x), undo (z); then a model
promoted behind the page's back ("model v3 is live"), decisions made while offline (kept in the
outbox and sent when the network is back) and a key revoked mid-session (401 shown, nothing lost).
The service's state is checked in the store after each step.

Screenshots go to the test's tmp dir; ``EDGE_AL_SCREENSHOTS=1`` also writes them to
docs/screenshots/ (annotate.png at 1366x768, tablet.png at 820x1180) for the README.

Needs /usr/bin/chromium and the python ``playwright`` package: ``scripts/setup-browser.sh``
installs both (never ``playwright install``: that downloads browser builds). Without them the test
is skipped, except under CI, where it fails.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_al.config import Settings
from edge_al.pool import ingest
from edge_al.registry import ModelVersion, Registry
from edge_al.scoring import score_pool
from edge_al.store import open_store

from .helpers import build_tiny_ir, write_digit_images

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LABELS = [f"d{i}" for i in range(10)]
REPO = Path(__file__).resolve().parents[1]


def _need_browser() -> Any:
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "the python package playwright is not installed"
    if problem is None and not os.access(CHROMIUM, os.X_OK):
        problem = f"{CHROMIUM} is missing"
    if problem is not None:
        msg = f"{problem}: run scripts/setup-browser.sh"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return sync_playwright


# -- the blueprint alone (fast) ----------------------------------------------------------------


def test_page_and_assets_are_served_without_a_key(tmp_path: Path) -> None:
    from edge_al.api import create_app

    app = create_app(Settings(home=tmp_path / "home"), {"START_MODEL": False, "JOBS": False})
    client = app.test_client()
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for name, mimetype in (("app.js", "text/javascript"), ("app.css", "text/css")):
        resp = client.get(f"/static/{name}")
        assert resp.status_code == 200 and resp.mimetype == mimetype, name
    assert client.get("/static/missing.js").status_code == 404
    assert client.get("/static/../ui.py").status_code == 404
    assert client.get("/v1/stats").status_code == 401  # the page is public, the API is not


def test_the_page_needs_nothing_from_outside() -> None:
    """No CDN, no external fonts, no build step: every asset is a file of edge_al/api/static/."""
    static = REPO / "edge_al" / "api" / "static"
    for path in static.iterdir():
        text = path.read_text(encoding="utf-8")
        for needle in ("http://", "https://", "//cdn", "@import", "fonts.googleapis"):
            hits = [line for line in text.splitlines() if needle in line and "www.w3.org/2000/svg" not in line]
            assert not hits, f"{path.name} refers outside edge-al: {hits[0].strip()}"


# -- the workspace and the server --------------------------------------------------------------


def _publish(registry: Registry, seed: int, balanced_accuracy: float, num_train_labels: int) -> ModelVersion:
    """A tiny real IR with a learning-curve point in its metadata (publish_tiny records none)."""
    import openvino as ov

    version = registry.reserve()
    staging = registry.staging()
    model = build_tiny_ir(LABELS, seed=seed)
    model.set_rt_info(version, ["model_info", "version"])
    ov.save_model(model, staging / "model.xml", compress_to_fp16=False)
    ov.save_model(model, staging / "reference.xml", compress_to_fp16=False)
    meta = {
        "labels": LABELS,
        "image_size": 32,
        "embedding_dim": 16,
        "precision": "fp32",
        "arch": "tiny",
        "metrics": {"accuracy": balanced_accuracy + 0.05, "balanced_accuracy": balanced_accuracy},
        "num_train_labels": num_train_labels,
    }
    return registry.publish(staging, meta, version)


class Workspace:
    def __init__(self, home: Path, truth: dict[int, str], versions: list[str]) -> None:
        self.home = home
        self.truth = truth
        self.versions = versions

    def cli(self, *args: str) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "edge_al", "--home", str(self.home), "--json", *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("ui")
    settings = Settings(home=root / "home")
    store = open_store(settings)
    registry = Registry(settings.registry_dir)
    try:
        for name in LABELS:
            store.add_label(name)
        files = write_digit_images(root / "images", n=80)
        label_of = {str(p): lab for p, lab in files}
        ingest(store, settings, [root / "images"])
        truth = {s.id: label_of[s.path] for s in store.samples()}
        for sid in sorted(truth)[:12]:  # some labels already in, as after a first round
            store.add_annotation(sid, "correct", truth[sid], "seed")
        versions = [
            _publish(registry, seed=0, balanced_accuracy=0.31, num_train_labels=4).version,
            _publish(registry, seed=1, balanced_accuracy=0.48, num_train_labels=12).version,
            _publish(registry, seed=2, balanced_accuracy=0.63, num_train_labels=26).version,
        ]
        # Score the pool with the last two (the page switches between them), serve the middle one.
        for v in (versions[2], versions[1]):
            registry.promote(v)
            score_pool(settings, store, registry)
    finally:
        store.close()
    return Workspace(settings.home, truth, versions)


class Server:
    def __init__(self, proc: subprocess.Popen[str], url: str, log: list[str]) -> None:
        self.proc, self.url, self.log = proc, url, log

    def call(self, method: str, path: str, key: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={"Authorization": f"Bearer {key}"})
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())


@pytest.fixture(scope="module")
def server(workspace: Workspace) -> Iterator[Server]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", EDGE_AL_RETRAIN_AFTER="40")
    workspace.cli("keys", "add", "--role", "admin", "--name", "ops")  # serve refuses to start without keys
    cmd = [sys.executable, "-m", "edge_al", "--home", str(workspace.home), "serve", "--host", "127.0.0.1", "--port", "0", "--threads", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    url = None
    deadline = time.monotonic() + 90
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if "serving http://" in line:
            url = line.split("serving ", 1)[1].split()[0].rstrip("/")
    if url is None:
        proc.kill()
        pytest.fail("edge-al serve did not start:\n" + "".join(log[-40:]))
    try:
        yield Server(proc, url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# -- the browser test ---------------------------------------------------------------------------


def _wait(cond: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _standing(home: Path) -> dict[int, Any]:
    store = open_store(Settings(home=home))
    try:
        return store.current_annotations()
    finally:
        store.close()


def _history(home: Path, sample_id: int) -> list[str]:
    store = open_store(Settings(home=home))
    try:
        return [a.action for a in store.annotation_history(sample_id)]
    finally:
        store.close()


@pytest.mark.slow
def test_annotate_with_the_keyboard_in_a_real_browser(workspace: Workspace, server: Server, tmp_path: Path) -> None:
    sync_playwright = _need_browser()
    annotator_key = workspace.cli("keys", "add", "--role", "annotator", "--name", "alice")
    admin_key = workspace.cli("keys", "add", "--role", "admin", "--name", "test-admin")["key"]
    shots = tmp_path / "screenshots"
    shots.mkdir()
    errors: list[str] = []
    home = workspace.home
    v_first, v_serve, v_next = workspace.versions

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a new, empty user-data-dir
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1366, "height": 768},
        )
        try:
            page = ctx.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url + "/")

            def state() -> dict[str, Any]:
                st: dict[str, Any] = page.evaluate("window.edgeAl.state()")
                return st

            def settled() -> bool:
                st = state()
                return st["outbox"] == 0 and not st["sending"]

            # Sign in with the keyboard; a wrong key is refused plainly.
            page.wait_for_selector("#login[open]")
            page.keyboard.type("alice")
            page.keyboard.press("Tab")
            page.keyboard.type("eak_not-a-real-key")
            page.keyboard.press("Enter")
            page.wait_for_selector("#login-error:not([hidden])")
            assert "401" in page.inner_text("#login-error")
            page.fill("#login-key", annotator_key["key"])
            page.keyboard.press("Enter")
            page.wait_for_selector("#image:not([hidden])", timeout=20_000)
            assert page.locator("#classes button").count() == len(LABELS)
            assert page.get_attribute("#classes button >> nth=2", "aria-label").startswith(("Correct to d2", "Confirm d2"))
            _wait(lambda: page.inner_text("#stat-model") == v_serve, "the active model in the header")
            _wait(lambda: len(state()["buffer"]) >= 3, "the prefetched buffer")
            assert page.evaluate("localStorage.getItem('edge-al.annotator')") == "alice"

            # Enter accepts, a number corrects, x rejects, Enter again; all with the keyboard.
            decided: list[tuple[int, str | None, str]] = []  # (sample, label, action)
            for key in ["Enter", "3", "x", "Enter"]:
                st = state()
                sid, predicted = st["current"], st["predicted"]
                page.keyboard.press(key)
                _wait(lambda sid=sid: state()["current"] != sid, f"the page to move past sample {sid}")
                if key == "Enter":
                    decided.append((sid, predicted, "accept"))
                elif key == "x":
                    decided.append((sid, None, "reject"))
                else:  # "3" is the third class; choosing the guess itself counts as accepting it
                    decided.append((sid, "d2", "accept" if predicted == "d2" else "correct"))
            _wait(settled, "the decisions to be saved")
            standing = _standing(home)
            for sid, label, action in decided:
                assert (standing[sid].annotator, standing[sid].label, standing[sid].action) == ("alice", label, action)
            assert page.locator("#recent li[data-state='saved']").count() == 4

            # z undoes the last decision on the server and brings that sample back to the front.
            last = decided[-1][0]
            page.keyboard.press("z")
            _wait(lambda: state()["current"] == last, "the undone sample back on screen")
            _wait(settled, "the undo to be saved")
            assert last not in _standing(home)
            assert _history(home, last)[-2:] == ["accept", "undo"]
            alice = [a for a in _standing(home).values() if a.annotator == "alice"]
            assert len(alice) == 3
            assert page.get_attribute("#image", "src").startswith("blob:")

            # The header: labels done (12 seeded + 2 labels; the reject gives none), the learning curve.
            _wait(lambda: page.inner_text("#stat-labeled") == "14", "the label count in the header", timeout=12)
            assert page.locator("#chart circle").count() == 3
            assert page.inner_text("#stat-retrain").endswith(("label", "labels", "%", "queued", "now"))
            page.locator("#stage").focus()
            page.screenshot(path=str(shots / "annotate.png"))

            # A new model goes live behind the page's back: the page says so and re-ranks.
            server.call("POST", f"/v1/models/{v_next}/promote", admin_key)
            _wait(lambda: page.is_visible("#notice") and f"{v_next} is live" in page.inner_text("#notice"), "the 'model is live' notice")
            assert state()["model"] == v_next
            _wait(lambda: len(state()["buffer"]) >= 1 and state()["current"] is not None, "the queue under the new model")

            # Offline: decisions wait in the outbox (persisted), are marked, and go out when back.
            ctx.set_offline(True)
            sid_off = state()["current"]
            page.keyboard.press("Enter")
            _wait(lambda: "not yet saved" in page.inner_text("#outbox"), "the unsent decision to be marked")
            assert json.loads(page.evaluate("localStorage.getItem('edge-al.outbox')"))[0]["body"]["sample_id"] == sid_off
            assert page.locator("#recent li[data-state='pending']").count() == 1
            ctx.set_offline(False)
            _wait(settled, "the outbox to drain after the network came back", timeout=40)
            assert _standing(home)[sid_off].annotator == "alice"

            # The key is revoked mid-session: 401 shown plainly, the decision kept, sent after re-entry.
            workspace.cli("keys", "revoke", str(annotator_key["id"]))
            sid_401 = state()["current"]
            page.keyboard.press("1")
            page.wait_for_selector("#banner:not([hidden])", timeout=20_000)
            assert "refused" in page.inner_text("#banner") and "401" in page.inner_text("#banner")
            assert "not yet saved" in page.inner_text("#outbox")
            assert sid_401 not in _standing(home)
            new_key = workspace.cli("keys", "add", "--role", "annotator", "--name", "alice")["key"]
            page.click("#banner-action")
            page.wait_for_selector("#login[open]")
            page.fill("#login-key", new_key)
            page.keyboard.press("Enter")
            _wait(settled, "the kept decision to be sent with the new key")
            assert page.is_hidden("#banner")
            assert _standing(home)[sid_401].label == "d0"

            # Tablet portrait.
            page.set_viewport_size({"width": 820, "height": 1180})
            page.locator("#notice-close").click()
            page.locator("#stage").focus()
            time.sleep(0.3)
            page.screenshot(path=str(shots / "tablet.png"))
            accept_box = page.locator("#btn-accept").bounding_box()
            assert accept_box is not None and accept_box["height"] >= 56  # a big touch target
        finally:
            ctx.close()

    assert not errors, errors
    assert v_first != v_serve
    if os.environ.get("EDGE_AL_SCREENSHOTS"):
        dest = REPO / "docs" / "screenshots"
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("annotate.png", "tablet.png"):
            shutil.copyfile(shots / name, dest / name)


LONG_LABEL = "MT_Blowhole_with_a_long_descriptive_name"


def _label_every_class(home: Path, truth: dict[int, str]) -> None:
    """One labeled sample of every class (as after a first round), so any guess has examples to show."""
    store = open_store(Settings(home=home))
    try:
        have = {a.label for a in store.current_annotations().values()}
        taken = set(store.current_annotations())
        for sid, label in sorted(truth.items()):
            if label not in have and sid not in taken:
                store.add_annotation(sid, "correct", label, "seed")
                have.add(label)
    finally:
        store.close()


@pytest.mark.slow
def test_the_page_helps_the_expert_decide(workspace: Workspace, server: Server, tmp_path: Path) -> None:
    """Full class names, a learning curve of promoted models, zoom and pan (wheel, drag, keys), the reason
    an image was picked, and labeled examples of the guessed class (issue 13)."""
    sync_playwright = _need_browser()
    key = workspace.cli("keys", "add", "--role", "annotator", "--name", "bob")["key"]
    admin = workspace.cli("keys", "add", "--role", "admin", "--name", "ops2")["key"]
    server.call("POST", "/v1/labels", admin, {"name": LONG_LABEL})
    _label_every_class(workspace.home, workspace.truth)
    errors: list[str] = []
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                    headless=True, viewport={"width": 1366, "height": 768})  # fmt: skip
        try:
            page = ctx.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url + "/")
            page.wait_for_selector("#login[open]")
            page.fill("#login-name", "robert")  # a name other than the key's: decisions go under the key's (bob)
            page.fill("#login-key", key)
            page.keyboard.press("Enter")
            page.wait_for_selector("#image:not([hidden])", timeout=20_000)
            _wait(lambda: page.inner_text("#who-name") == "bob", "the page naming the key's annotator")

            def state() -> dict[str, Any]:
                st: dict[str, Any] = page.evaluate("window.edgeAl.state()")
                return st

            # Full class names: the long one is on its button in full, not cut (wraps; tooltip too).
            button = page.locator(f"#classes button[data-label='{LONG_LABEL}']")
            _wait(lambda: button.count() == 1, "the long class name's button")
            name = button.locator(".name")
            assert name.inner_text() == LONG_LABEL and button.get_attribute("title") == LONG_LABEL
            fits = name.evaluate("e => e.scrollWidth <= e.clientWidth + 1 && e.scrollHeight <= e.clientHeight + 1")
            nb, bb = name.bounding_box(), button.bounding_box()
            assert fits and nb is not None and bb is not None and nb["x"] + nb["width"] <= bb["x"] + bb["width"] + 1
            assert nb["y"] + nb["height"] <= bb["y"] + bb["height"] + 1, "the name overflows its button"

            # The learning curve joins promoted versions only; the never-promoted first one is a hollow mark.
            v_first = workspace.versions[0]
            _wait(lambda: page.locator("#chart circle.kept").count() == 1, "the not-promoted mark on the curve")
            assert page.get_attribute("#chart circle.kept", "data-version") == v_first
            assert v_first not in [c.get_attribute("data-version") for c in page.locator("#chart circle:not(.kept)").all()]
            assert "Not promoted: " + v_first in page.inner_html("#chart-title")

            # Why this image: the queue item's reason, in words.
            _wait(lambda: page.is_visible("#guess-reason"), "the reason for the pick")
            assert state()["reason"] in {
                "uncertain",
                "rare predicted class",
                "unlike anything labeled",
                "cold-start typical",
                "cold-start farthest",
            }
            assert len(page.inner_text("#guess-reason-text")) > 10

            # Labeled examples of the guessed class, to compare against: each thumbnail is labeled that class.
            predicted = state()["predicted"]
            _wait(lambda: page.locator("#examples-strip img").count() >= 1, f"labeled examples of {predicted}")
            assert page.text_content("#examples-heading .cls-name") == predicted
            standing = _standing(workspace.home)
            for img in page.locator("#examples-strip img").all():
                assert standing[int(img.get_attribute("data-sample-id") or 0)].label == predicted
            _wait(lambda: page.evaluate("[...document.querySelectorAll('#examples-strip img')].every(i => i.naturalWidth > 0)"),
                  "the thumbnails to decode")  # fmt: skip

            # Zoom and pan: the mouse wheel over the image, drag, then keys; nothing is decided by them.
            sid, decided = state()["current"], state()["history"]
            before = page.locator("#image").bounding_box()
            assert before is not None
            page.mouse.move(before["x"] + before["width"] * 0.3, before["y"] + before["height"] * 0.3)
            page.mouse.wheel(0, -300)
            _wait(lambda: state()["zoom"]["scale"] > 1.2, "the wheel to zoom in")
            after = page.locator("#image").bounding_box()
            assert after is not None and after["width"] > before["width"] * 1.2  # the image really is bigger on screen
            x0 = state()["zoom"]["x"]
            page.mouse.down()
            page.mouse.move(before["x"] + before["width"] * 0.3 + 40, before["y"] + before["height"] * 0.3, steps=4)
            page.mouse.up()
            assert state()["zoom"]["x"] != x0, "dragging did not pan"
            page.locator("#stage").focus()
            scale = state()["zoom"]["scale"]
            page.keyboard.press("+")
            _wait(lambda: state()["zoom"]["scale"] > scale, "+ to zoom in")
            x1 = state()["zoom"]["x"]
            page.keyboard.press("ArrowRight")
            _wait(lambda: state()["zoom"]["x"] != x1, "an arrow key to pan")
            page.keyboard.press("-")
            page.keyboard.press("0")  # while zoomed: back to the whole image, not the tenth class
            _wait(lambda: state()["zoom"]["scale"] == 1 and state()["zoom"]["x"] == 0, "0 to reset the zoom")
            page.keyboard.press("+")
            page.keyboard.press("r")
            _wait(lambda: state()["zoom"]["scale"] == 1, "r to reset the zoom")
            assert state()["current"] == sid and state()["history"] == decided, "a zoom key decided something"
            assert page.inner_text("#zoom-level") == "100%"
        finally:
            ctx.close()
    assert not errors, errors
