"""Synthetic fixtures for tests and benchmarks: tiny real OpenVINO models, generated image pools, a
scored workspace (no downloads). The test suite and scripts/ import them from here."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import openvino.opset13 as ops

from edge_al.config import Settings
from edge_al.pool import ingest
from edge_al.registry import ModelVersion, Registry
from edge_al.scoring import score_pool
from edge_al.store import open_store

from .digits import write_digits


def build_tiny_ir(labels: list[str], size: int = 32, dim: int = 16, seed: int = 0) -> ov.Model:
    """A real (tiny) classifier IR with the edge-al contract: u8 NHWC BGR in, probs + embedding out.

    Its embedding is a fixed random projection of the down-sampled image, so similar images get
    similar embeddings and predictions; no training involved.
    """
    rng = np.random.default_rng(seed)
    x = ops.parameter(ov.PartialShape([-1, size, size, 3]), ov.Type.u8, name="image")
    x.output(0).get_tensor().set_names({"image"})
    f = ops.convert(x, ov.Type.f32)
    f = ops.multiply(f, ops.constant(np.float32(1.0 / 255.0)))
    flat = ops.reshape(f, ops.constant(np.array([-1, size * size * 3], dtype=np.int64)), special_zero=False)
    w1 = ops.constant((rng.standard_normal((size * size * 3, dim)) / np.sqrt(size * size * 3)).astype(np.float32))
    emb = ops.relu(ops.matmul(flat, w1, False, False))
    emb.output(0).get_tensor().set_names({"embedding"})
    w2 = ops.constant(rng.standard_normal((dim, len(labels))).astype(np.float32) * 4.0)
    logits = ops.matmul(emb, w2, False, False)
    probs = ops.softmax(logits, 1)
    probs.output(0).get_tensor().set_names({"probs"})
    model = ov.Model([probs.output(0), emb.output(0)], [x], "tiny")
    model.set_rt_info(json.dumps(labels), ["model_info", "labels"])
    model.set_rt_info(str(size), ["model_info", "input_width"])
    model.set_rt_info(str(size), ["model_info", "input_height"])
    return model


def publish_tiny(registry: Registry, labels: list[str], size: int = 32, dim: int = 16, seed: int = 0, promote: bool = True) -> ModelVersion:
    version = registry.reserve()
    staging = registry.staging()
    model = build_tiny_ir(labels, size, dim, seed)
    model.set_rt_info(version, ["model_info", "version"])
    ov.save_model(model, staging / "model.xml", compress_to_fp16=False)
    ov.save_model(model, staging / "reference.xml", compress_to_fp16=False)
    meta = {
        "labels": labels,
        "image_size": size,
        "embedding_dim": dim,
        "precision": "fp32",
        "arch": "tiny",
        "metrics": {},
        "num_train_labels": 0,
    }
    mv = registry.publish(staging, meta, version)
    if promote:
        registry.promote(mv.version)
    return mv


def write_jpegs(root: Path, n: int, size: tuple[int, int] = (320, 240), seed: int = 0) -> list[Path]:
    """Generated JPEGs of coloured shapes, for scoring pools."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        img = np.full((size[1], size[0], 3), rng.integers(0, 255, 3), dtype=np.uint8)
        c = (int(rng.integers(0, size[0])), int(rng.integers(0, size[1])))
        cv2.circle(img, c, int(rng.integers(5, 60)), tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
        p = root / f"gen_{i:06d}.jpg"
        cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(p)
    return out


SHAPES = ("circle", "square", "triangle", "bar")


def shape_image(kind: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """u8 [size, size, 3] BGR: one filled shape of a class colour on a noisy background."""
    colours = {"circle": (40, 40, 220), "square": (40, 200, 40), "triangle": (220, 60, 40), "bar": (30, 200, 230)}
    img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    c = int(size // 2 + rng.integers(-size // 8, size // 8 + 1))
    r = int(size // 4 + rng.integers(-size // 16, size // 16 + 1))
    col = tuple(int(min(255, max(0, v + rng.integers(-25, 26)))) for v in colours[kind])
    if kind == "circle":
        cv2.circle(img, (c, c), r, col, -1)
    elif kind == "square":
        cv2.rectangle(img, (c - r, c - r), (c + r, c + r), col, -1)
    elif kind == "triangle":
        pts = np.array([[c, c - r], [c - r, c + r], [c + r, c + r]], dtype=np.int32)
        cv2.fillPoly(img, [pts], col)
    else:
        cv2.rectangle(img, (2, c - r // 3), (size - 3, c + r // 3), col, -1)
    return img


def write_shape_images(root: Path, n: int, size: int = 32, seed: int = 0) -> list[tuple[Path, str]]:
    """A generated pool of four easy classes (``SHAPES``): ``n`` PNGs in ``root/<class>/``;
    returns (path, label)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = SHAPES[i % len(SHAPES)]
        (root / kind).mkdir(parents=True, exist_ok=True)
        p = root / kind / f"{kind}_{i:05d}.png"
        cv2.imwrite(str(p), shape_image(kind, rng, size))
        out.append((p, kind))
    return out


DIGIT_LABELS = [f"d{i}" for i in range(10)]


def build_workspace(
    root: Path, n: int = 30, score: bool = True, model: bool = True, db_url: str | None = None
) -> tuple[Settings, list[tuple[Path, str]]]:
    """A workspace with the tiny model active, ``n`` digit images ingested and (optionally) scored;
    its store on ``db_url`` (a PostgreSQL database) or, by default, the SQLite file in ``root/home``."""
    settings = Settings(home=root / "home", db_url=db_url)
    registry = Registry(settings.registry_dir)
    if model:
        publish_tiny(registry, DIGIT_LABELS)
    pairs = write_digits(root / "pool", by_class=True, limit=n)
    store = open_store(settings)
    try:
        for name in DIGIT_LABELS:
            store.add_label(name)
        ingest(store, settings, [root / "pool"])
        if score and model:
            score_pool(settings, store, registry)
    finally:
        store.close()
    return settings, pairs
