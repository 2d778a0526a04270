"""The build side: training, torch -> ONNX -> IR -> INT8, gates, publishing (tiny digits models)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("nncf")

import cv2
import openvino as ov
import torch

from edge_al.engine import Engine, read_model_info
from edge_al.errors import GateFailed, InvalidInput
from edge_al.registry import Registry
from export.convert import ExportGateWarning, export_checkpoint
from export.train import build_model, imagenet_weights_path, load_checkpoint, save_checkpoint, train
from export.workflow import export_from_store, train_from_store, training_fingerprint, val_mask_for
from tests.helpers import int8_weight_range

SIZE = 32
CLASSES = [0, 1, 2, 3]
LABELS = ["zero", "one", "two", "three"]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from export.tools.digits import digit_images

    imgs, digits, _ = digit_images(SIZE, classes=CLASSES)
    bgr = np.repeat(imgs[..., None], 3, axis=3)
    # A little colour so that a BGR/RGB swap in the IR would show up in the parity gate.
    bgr[..., 0] = (bgr[..., 0].astype(np.int32) * 3 // 4).astype(np.uint8)
    return bgr, digits


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The test box has 2 shared cores: one torch thread is several times faster under contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pool() -> dict[str, np.ndarray]:
    images, labels = _digits()
    val = val_mask_for([f"{i:064x}" for i in range(len(labels))], labels.tolist(), 0.25)
    return {"images": images, "labels": labels, "val": val}


@pytest.fixture(scope="module")
def trained(pool: dict[str, np.ndarray]) -> dict:
    res = train(pool["images"], pool["labels"], LABELS, image_size=SIZE, epochs=4, seed=0, val_mask=pool["val"], progress=False)
    return res.checkpoint


def _export(ckpt: dict, registry: Registry, pool: dict[str, np.ndarray], **kw):
    imgs, labels, val = pool["images"], pool["labels"], pool["val"]
    kw.setdefault("progress", False)
    return export_checkpoint(
        ckpt, registry, calibration_images=imgs[:300], val_images=imgs[val], val_labels=labels[val], sample_images=imgs[:200],
        train_fingerprint="f" * 64, num_train_labels=len(labels), **kw,
    )  # fmt: skip


# -- fast --------------------------------------------------------------------------------------
def test_val_mask_is_deterministic_stable_and_stratified() -> None:
    rng = np.random.default_rng(0)
    shas = [f"{rng.integers(0, 2**63):064x}" for _ in range(200)]
    labels = ["a"] * 150 + ["b"] * 40 + ["c"] * 5 + ["d"] * 3 + ["e"] * 2
    m1 = val_mask_for(shas, labels, 0.2)
    m2 = val_mask_for(list(shas), list(labels), 0.2)
    assert np.array_equal(m1, m2)
    assert 0.1 < m1[:150].mean() < 0.3
    lab = np.array(labels)
    for c in "abcd":
        assert m1[lab == c].any() and (~m1[lab == c]).any(), c
    assert not m1[lab == "e"].any()
    # Adding samples does not move the big classes' existing samples across the split.
    more = shas + [f"{rng.integers(0, 2**63):064x}" for _ in range(50)]
    m3 = val_mask_for(more, labels + ["a"] * 50, 0.2)
    assert np.array_equal(m3[:150], m1[:150])
    # Order does not matter either.
    perm = rng.permutation(200)
    m4 = val_mask_for([shas[i] for i in perm], [labels[i] for i in perm], 0.2)
    assert np.array_equal(m4, m1[perm])
    with pytest.raises(InvalidInput):
        val_mask_for(shas, labels, 1.5)


def test_training_fingerprint_ignores_order() -> None:
    assert training_fingerprint(["b", "a"], ["x", "y"]) == training_fingerprint(["a", "b"], ["y", "x"])
    assert training_fingerprint(["a", "b"], ["x", "y"]) != training_fingerprint(["a", "b"], ["y", "x"])


def test_imagenet_weights_missing_raise_a_clear_error_without_downloading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(*a: object, **k: object) -> None:
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    expected = imagenet_weights_path("mobilenet_v3_small")
    assert expected.parent == tmp_path / "hub" / "checkpoints"
    with pytest.raises(InvalidInput, match=str(expected.name)):
        build_model("mobilenet_v3_small", 3, "imagenet")


def test_imagenet_weights_load_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(AssertionError("download")))
    fake = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        fake.conv1.weight.fill_(0.125)
    path = imagenet_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(fake.state_dict(), path)
    model = build_model("resnet18", 3, "imagenet")
    assert torch.all(model.backbone.conv1.weight == 0.125)
    assert model.head.out_features == 3 and model.embedding_dim == 512


def test_bad_inputs_are_rejected() -> None:
    imgs = np.zeros((8, SIZE, SIZE, 3), np.uint8)
    with pytest.raises(InvalidInput, match="image_size"):
        train(imgs, np.zeros(8, np.int64), ["a", "b"], image_size=64, epochs=1, progress=False)
    with pytest.raises(InvalidInput, match="arch"):
        train(imgs, np.zeros(8, np.int64), ["a", "b"], arch="vgg", image_size=SIZE, epochs=1, progress=False)
    with pytest.raises(InvalidInput, match="balance"):
        train(imgs, np.zeros(8, np.int64), ["a", "b"], image_size=SIZE, epochs=1, balance="x", progress=False)
    with pytest.raises(InvalidInput, match="2 distinct"):
        train(imgs, np.zeros(8, np.int64), ["a"], image_size=SIZE, epochs=1, progress=False)


# -- slow: real models -------------------------------------------------------------------------
@pytest.mark.slow
def test_training_is_deterministic_and_checkpoints_round_trip(pool: dict[str, np.ndarray], tmp_path: Path) -> None:
    imgs, labels = pool["images"][:96], pool["labels"][:96]
    kw = {"image_size": SIZE, "epochs": 1, "batch_size": 16, "seed": 3, "progress": False, "balance": "loss"}
    a = train(imgs, labels, LABELS, **kw)
    b = train(imgs, labels, LABELS, **kw)
    for k, v in a.checkpoint["state_dict"].items():
        assert torch.equal(v, b.checkpoint["state_dict"][k]), k
    probs, emb = a.model(torch.zeros(2, 3, SIZE, SIZE))
    assert probs.shape == (2, 4) and emb.shape == (2, 1024)
    assert torch.allclose(probs.sum(1), torch.ones(2))
    path = a.save_checkpoint(tmp_path / "c" / "a.pt")
    assert not [p for p in path.parent.iterdir() if p.name != "a.pt"]  # no temp left behind
    back = load_checkpoint(path)
    assert back["label_names"] == LABELS and back["arch"] == "mobilenet_v3_small" and back["image_size"] == SIZE
    # Warm start from a checkpoint whose labels are ordered differently: the head is remapped.
    c = train(imgs, labels, [*LABELS[1:], LABELS[0]], weights=str(path), **{**kw, "epochs": 1})
    assert c.checkpoint["weights"] == str(path)


@pytest.mark.slow
def test_export_publishes_an_int8_ir_that_passes_the_gates(trained: dict, pool: dict[str, np.ndarray], tmp_path: Path) -> None:
    assert trained["val_metrics"]["accuracy"] > 0.7, trained["val_metrics"]
    reg = Registry(tmp_path / "models")
    # The gate default is 99% top-1 agreement; a 4-epoch digits model has many low-margin
    # samples, so the test allows 95% and checks the figure below.
    mv, report = _export(trained, reg, pool, min_agreement=0.95)
    assert report["precision"] == "int8" and not report["fallback"]
    for name in ("onnx_parity", "ir_parity", "int8_agreement", "int8_accuracy"):
        assert report["gates"][name]["passed"], report["gates"][name]
    assert report["gates"]["ir_parity"]["max_abs_prob_diff"] < 1e-3
    assert sorted(p.name for p in mv.path.iterdir()) == sorted(
        ["model.xml", "model.bin", "reference.xml", "reference.bin", "meta.json", "report.json", "checkpoint.pt"]
    )
    assert json.loads((mv.path / "report.json").read_text())["gates"]["ir_parity"]["passed"]
    assert mv.meta["labels"] == LABELS and mv.meta["precision"] == "int8" and mv.meta["image_size"] == SIZE
    assert mv.meta["num_train_labels"] == len(pool["labels"]) and mv.meta["train_fingerprint"] == "f" * 64
    assert not list(reg.root.glob(".staging-*")) and not list(reg.root.glob(".reserved-*"))

    core = ov.Core()
    model = core.read_model(mv.xml)
    assert model.input(0).get_element_type() == ov.Type.u8
    assert list(model.input(0).get_partial_shape()[1:].to_shape()) == [SIZE, SIZE, 3]
    assert [o.get_any_name() for o in model.outputs] == ["probs", "embedding"]
    info = read_model_info(model).raw
    assert info["labels"] == LABELS and info["model_version"] == mv.version and info["precision"] == "int8"
    assert info["normalization"]["mean"] == [0.485, 0.456, 0.406] and info["resize_mode"] == "stretch"
    assert info["quantization"]["preset"] == "mixed" and info["quantization"]["fast_bias_correction"] is False
    n_weights, top = int8_weight_range(model)  # 7-bit weights: no int16 saturation on AVX2-only CPUs
    assert n_weights > 10 and top <= 64 and info["quantization"]["overflow_fix"] == "enable"
    # Reshape to a static batch, the way the line runs it.
    model.reshape({0: [8, SIZE, SIZE, 3]})
    req = core.compile_model(model, "CPU").create_infer_request()
    out = req.infer({0: pool["images"][:8]})
    assert out[0].shape == (8, 4) and out[1].shape == (8, 1024)

    # INT8 agrees with the FP32 reference (compiled at f32) on top-1.
    p_ref, _ = Engine(mv.reference_xml, batch=8, precision="f32").infer(pool["images"][:200])
    p_q, _ = Engine(mv.xml, batch=8).infer(pool["images"][:200])
    assert np.mean(p_ref.argmax(1) == p_q.argmax(1)) >= 0.95
    assert read_model_info(core.read_model(mv.reference_xml)).raw["precision"] == "fp32"


@pytest.mark.slow
def test_failed_accuracy_gate_falls_back_to_fp32_loudly(trained: dict, pool: dict[str, np.ndarray], tmp_path: Path) -> None:
    reg = Registry(tmp_path / "models")
    with pytest.warns(ExportGateWarning, match="failed its gates"):
        mv, report = _export(trained, reg, pool, max_drop=-1.0, exporter="torchscript")
    assert report["fallback"] is True and report["precision"] == "fp32"
    assert not report["gates"]["int8_accuracy"]["passed"]
    assert mv.meta["precision"] == "fp32" and mv.meta["fallback"] is True
    info = read_model_info(ov.Core().read_model(mv.xml)).raw
    assert info["precision"] == "fp32" and info["runtime_config"] == {"INFERENCE_PRECISION_HINT": "f32"}
    assert (mv.path / "model.bin").stat().st_size == (mv.path / "reference.bin").stat().st_size


@pytest.mark.slow
def test_failed_parity_gate_publishes_nothing(trained: dict, pool: dict[str, np.ndarray], tmp_path: Path) -> None:
    reg = Registry(tmp_path / "models")
    with pytest.raises(GateFailed, match="parity"):
        _export(trained, reg, pool, parity_tol=0.0, exporter="torchscript")
    assert reg.versions() == []
    assert [p.name for p in reg.root.iterdir()] == []  # no staging folder, no reservation


@pytest.mark.slow
def test_crash_during_publish_leaves_the_registry_usable(
    trained: dict, pool: dict[str, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = Registry(tmp_path / "models")
    first, _ = _export(trained, reg, pool, int8=False, exporter="torchscript")
    reg.promote(first.version)

    def boom(*a: object, **k: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr("edge_al.registry.os.rename", boom)
    with pytest.raises(OSError, match="disk on fire"):
        _export(trained, reg, pool, int8=False, exporter="torchscript")
    monkeypatch.undo()
    assert [v.version for v in reg.versions()] == [first.version]
    assert not list(reg.root.glob(".staging-*")) and not list(reg.root.glob(".reserved-*"))
    active = reg.active()
    assert active is not None and active.version == first.version
    ov.Core().read_model(active.xml)
    second, _ = _export(trained, reg, pool, int8=False, exporter="torchscript")
    assert second.version == "v0002"


@pytest.mark.slow
def test_resnet18_exports(pool: dict[str, np.ndarray], tmp_path: Path) -> None:
    idx = np.flatnonzero(~pool["val"])[:128]
    res = train(pool["images"][idx], pool["labels"][idx], LABELS, arch="resnet18", image_size=SIZE, epochs=1, progress=False)
    mv, report = _export(res.checkpoint, Registry(tmp_path / "models"), pool, max_drop=1.0, min_agreement=0.0)
    assert report["gates"]["ir_parity"]["passed"] and mv.meta["embedding_dim"] == 512
    model = ov.Core().read_model(mv.xml)
    assert model.output(1).get_partial_shape()[1].get_length() == 512
    assert read_model_info(model).raw["quantization"]["preset"] == "performance"


@pytest.mark.slow
def test_train_and_export_from_the_store(settings, store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from edge_al.pool import ingest

    images, labels = _digits()
    root = tmp_path / "imgs"
    for i, (img, lab) in enumerate(zip(images[:160], labels[:160], strict=True)):
        (root / LABELS[lab]).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / LABELS[lab] / f"{i:04d}.png"), img)
    for lab in LABELS:
        store.add_label(lab)
    report = ingest(store, settings, [root], labels_from_dirs=True)
    assert len(report.added) == 160
    ckpt_path = train_from_store(settings, store, image_size=SIZE, epochs=4, seed=0, batch_size=32, balance=None, progress=False)
    assert ckpt_path.parent == settings.checkpoints_dir
    ck = load_checkpoint(ckpt_path)
    assert ck["label_names"] == LABELS and len(ck["val_ids"]) > 0 and len(ck["train_fingerprint"]) == 64
    mv, rep = export_from_store(
        settings, store, ckpt_path, max_drop=1.0, min_agreement=0.0, calibration_size=64, sample_size=64, progress=False
    )
    assert mv.meta["val_sample_ids"] == ck["val_ids"] and rep["val_sample_ids"] == ck["val_ids"]
    assert mv.meta["train_fingerprint"] == ck["train_fingerprint"]
    assert load_checkpoint(mv.path / "checkpoint.pt")["train_fingerprint"] == ck["train_fingerprint"]


def test_train_from_store_needs_two_classes(settings, store) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match="at least 2 classes"):
        train_from_store(settings, store, image_size=SIZE, epochs=1, progress=False)


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.pt"
    save_checkpoint({"a": 1}, target)

    def boom(*a: object, **k: object) -> None:
        raise OSError("no")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_checkpoint({"a": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
