"""Active-learning simulation: every strategy against random sampling, on the production path.

A folder of class folders is the oracle. The simulation splits it into a pool and a test set
(by group where a groups file names them, stratified otherwise), and then, for each seed::

    base workspace (pool ingested once, image cache decoded once; shared read-only)
      -> round 0: the seed's initial labeled set -> train -> export INT8 (gates) -> promote -> score
         (identical for every strategy of the seed: built once, copied to each strategy)
      -> per strategy, rounds 1..R: select_next(strategy) -> reveal the oracle labels
         (store.add_annotation) -> train (warm start) -> export (gates) -> promote -> score_pool
      -> every published model is evaluated on the test set with the OpenVINO engine
      -> full-data reference: the whole pool labeled, trained and exported with the same settings

Each (seed, strategy) is a real edge-al workspace (SQLite store, registry, embeddings); the
image cache is one shared, fully decoded directory (sound: every row is written before any
workspace reads it, and sample ids agree because each workspace's store is a copy of the
base store). Results go to ``--out``: ``points.csv``, ``results.json``, ``curves.png``,
``rarest.png`` and ``summary.md``.

Imports ``export`` (torch) lazily, inside :func:`run_simulation`, so importing this module
costs nothing on a scoring box.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_al import acquisition
from edge_al.config import DEFAULT_ARCH, PACKAGED_WEIGHTS, Settings
from edge_al.errors import InvalidInput
from edge_al.lifecycle import balanced_accuracy
from edge_al.pool import IMAGE_SUFFIXES, ImageCache, ingest
from edge_al.registry import ModelVersion, Registry
from edge_al.storage import images_storage
from edge_al.store import Store, open_store

from .digits import write_digits

__all__ = [
    "DatasetSplit",
    "SimConfig",
    "labels_to_reach",
    "read_dataset",
    "run_simulation",
    "split_dataset",
    "summarize",
    "write_digits_folders",
]

log = logging.getLogger(__name__)

ORACLE = "oracle"
# The cold-start row: round 0 from a typical-and-diverse set on the pretrained features (no labels
# needed to pick it), then the default strategy.
COLD_STRATEGY = "hybrid"
COLD_ROW = "hybrid/cold-start"
DEFAULT_STRATEGIES = ("random", "entropy", "margin", "fre", "knn", "hybrid")


# -- configuration -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SimConfig:
    """Every knob of a simulation run (stored verbatim in ``results.json``)."""

    data: Path
    out: Path
    groups: Path | None = None
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    seeds: int = 5
    first_seed: int = 0
    initial: int = 20
    batch: int = 20
    rounds: int = 5
    test_fraction: float = 0.3
    split_seed: int = 0
    image_size: int | None = None  # None: the architecture's default (Settings.image_size_for)
    epochs: int = 10
    warm_epochs: int | None = None
    warm_start: bool = True
    arch: str = DEFAULT_ARCH
    weights: str | None = None  # None: imagenet where the train extra ships them, else none
    mode: str | None = None  # head | finetune | auto (export.workflow.resolve_mode)
    augment: str | None = None  # none | flips (export.workflow.train_from_store)
    cold_start: bool = True  # a row that starts from a typical-and-diverse initial set instead of a random one
    train_batch_size: int = 32
    lr: float | None = None  # export.workflow.train_from_store's: 1e-4 fine-tuning packaged weights, else 1e-3
    # the production export's sizes: a head-only round reuses the backbone's INT8 calibration, and the
    # agreement gate needs ~200 samples to resolve 99% (one flip in 100 is already 1%)
    calibration_size: int = 300
    sample_size: int = 200
    # the production export, less its costliest retry: NNCF accuracy control takes 20 to 150 s
    # whenever weak early-round models fail the INT8 agreement gate, and then mostly still fails
    accuracy_control: bool = False
    exporter: str = "dynamo"
    reference: bool = True
    reference_seeds: int | None = None
    reference_epochs: int | None = None
    reference_mode: str | None = None  # the reference's training mode (default: mode)
    work: Path | None = None
    keep_work: bool = False
    device: str = "CPU"
    progress: bool = True

    def validate(self) -> SimConfig:
        unknown = [s for s in self.strategies if s not in acquisition.STRATEGIES]
        if unknown or not self.strategies:
            raise InvalidInput(
                f"The 'strategies' parameter must name some of {', '.join(acquisition.STRATEGIES)}. Got {', '.join(self.strategies) or '(none)'} instead."
            )
        if "random" not in self.strategies:
            raise InvalidInput("The 'strategies' parameter must include random: every figure is relative to it.")
        for name, value, lo in (
            ("seeds", self.seeds, 1),
            ("initial", self.initial, 2),
            ("batch", self.batch, 1),
            ("rounds", self.rounds, 1),
            ("image_size", self.image_size if self.image_size is not None else 16, 16),
            ("epochs", self.epochs, 1),
            ("calibration_size", self.calibration_size, 1),
            ("sample_size", self.sample_size, 1),
        ):
            if not isinstance(value, int) or value < lo:
                raise InvalidInput(f"The '{name}' parameter must be an int >= {lo}. Got {value!r} instead.")
        if not 0.0 < self.test_fraction < 1.0:
            raise InvalidInput(f"The 'test_fraction' parameter must be a float in (0, 1). Got {self.test_fraction!r} instead.")
        from export.workflow import MODES

        for name, mode in (("mode", self.mode), ("reference_mode", self.reference_mode)):
            if mode not in (None, *MODES):
                raise InvalidInput(f"The '{name}' parameter must be one of {', '.join(MODES)}. Got {mode!r} instead.")
        return self

    @property
    def work_dir(self) -> Path:
        return self.work if self.work is not None else self.out / "work"

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))


# -- dataset and split ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSplit:
    """Files and their oracle classes, split into a pool and a test set.

    ``classes`` sorted class names; ``pool``/``test`` lists of ``(resolved path, class)``;
    ``rarest`` the class with the fewest pool images (ties: first by name).
    """

    classes: list[str]
    pool: list[tuple[Path, str]]
    test: list[tuple[Path, str]]
    grouped: bool

    @property
    def rarest(self) -> str:
        counts = self.pool_counts
        return min(self.classes, key=lambda c: (counts.get(c, 0), c))

    @property
    def pool_counts(self) -> dict[str, int]:
        return _counts(c for _, c in self.pool)

    @property
    def test_counts(self) -> dict[str, int]:
        return _counts(c for _, c in self.test)


def _counts(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in items:
        out[c] = out.get(c, 0) + 1
    return dict(sorted(out.items()))


def read_dataset(data: Path) -> list[tuple[Path, str]]:
    """``(resolved path, class)`` of every image in ``data/<class>/`` (one level of folders)."""
    data = Path(data)
    if not data.is_dir():
        raise InvalidInput(
            f"The 'data' parameter must be a folder with one sub-folder per class. Got {str(data)!r}, which is not a folder."
        )
    items = []
    for d in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(d.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                items.append((f.resolve(), d.name))
    classes = {c for _, c in items}
    if len(classes) < 2:
        raise InvalidInput(f"{data} must hold image folders of at least 2 classes. Found {len(classes)} with images.")
    return items


def read_groups(path: Path) -> dict[tuple[str, str], str]:
    """``(class, filename) -> group`` from a CSV with columns class, filename, group."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower() for c in reader.fieldnames or []}
        if not {"class", "filename", "group"} <= cols:
            raise InvalidInput(f"{path}: the groups file needs the columns class, filename, group. Got {sorted(cols)}.")
        rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items()} for r in reader]
    return {(r["class"], r["filename"]): r["group"] for r in rows}


def split_dataset(
    items: Sequence[tuple[Path, str]], groups: dict[tuple[str, str], str] | None, test_fraction: float, seed: int
) -> DatasetSplit:
    """Hold out ``test_fraction`` of each class's groups (each image its own group without a
    groups file: a stratified split). A class with >= 2 groups gets >= 1 test group and keeps
    >= 1 pool group; an image missing from the groups file is its own group."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, dict[str, list[int]]] = {}
    for i, (path, cls) in enumerate(items):
        g = groups.get((cls, path.name)) if groups else None
        by_class.setdefault(cls, {}).setdefault(g or f"__file__/{path.name}", []).append(i)
    test_idx: list[int] = []
    for cls in sorted(by_class):
        names = sorted(by_class[cls])
        if len(names) < 2:
            continue
        k = min(len(names) - 1, max(1, round(test_fraction * len(names))))
        for g in rng.permutation(names)[:k]:
            test_idx += by_class[cls][str(g)]
    is_test = np.zeros(len(items), dtype=bool)
    is_test[test_idx] = True
    return DatasetSplit(
        classes=sorted(by_class),
        pool=[items[i] for i in range(len(items)) if not is_test[i]],
        test=[items[i] for i in range(len(items)) if is_test[i]],
        grouped=groups is not None,
    )


def write_digits_folders(root: Path, size: int = 32, classes: Sequence[int] | None = None, limit: int | None = None) -> int:
    """sklearn's bundled digits as ``root/d<k>/digit_<i>.png`` grayscale PNGs; returns the count.

    ``classes`` keeps only those digits; ``limit`` keeps the first ``limit`` images after that.
    """
    return len(write_digits(root, size, by_class=True, classes=classes, limit=limit))


# -- workspaces ----------------------------------------------------------------------------------
@dataclass
class SimHome:
    """One edge-al home: store, registry, embeddings; ``cache`` may be a link to a shared cache."""

    home: Path
    settings: Settings = field(init=False)
    store: Store = field(init=False)
    registry: Registry = field(init=False)

    def __post_init__(self) -> None:
        self.settings = Settings(home=self.home)
        self.store = open_store(self.settings)
        self.registry = Registry(self.settings.registry_dir)

    def close(self) -> None:
        self.store.close()


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link copy of a folder: sound for files that are only ever replaced, never rewritten
    (registry versions, checkpoints, embeddings of a scored version, registry.json)."""
    if not src.exists():
        return
    shutil.copytree(src, dst, copy_function=os.link, symlinks=True)


def clone_workspace(src: SimHome, home: Path, shared_cache: Path) -> SimHome:
    """A new workspace whose store is a copy of ``src``'s, sharing its registry files by hard link."""
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    src.store.backup_to(Settings(home=home).db_path)
    (home / "cache").symlink_to(shared_cache.resolve(), target_is_directory=True)
    for sub in ("models", "embeddings", "checkpoints"):
        _link_tree(src.home / sub, home / sub)
    if (src.home / "backbones").exists():  # one backbone and feature cache for every workspace of the run
        (home / "backbones").symlink_to((src.home / "backbones").resolve(), target_is_directory=True)
    return SimHome(home)


def _prune(ws: SimHome, keep: Iterable[str]) -> None:
    """Drop the big files of versions not in ``keep`` (meta.json and report.json stay)."""
    keep = set(keep)
    for mv in ws.registry.versions():
        if mv.version in keep:
            continue
        for f in mv.path.iterdir():
            if f.is_file() and f.name not in ("meta.json", "report.json"):
                f.unlink()
        emb = ws.settings.embeddings_dir / f"{mv.version}.f16"
        if emb.exists():
            emb.unlink()


# -- one round on the production path ------------------------------------------------------------
@dataclass
class RoundResult:
    version: str
    precision: str
    fallback: bool
    timings: dict[str, float]
    gates: dict[str, Any] = field(default_factory=dict)  # the INT8 gates' figures (_gate_figures)


def _gate_figures(report: dict[str, Any]) -> dict[str, Any]:
    """What decided INT8 or the fallback: each INT8 gate's verdict and the figures behind it."""
    gates = report.get("gates", {})
    agree, acc = gates.get("int8_agreement", {}), gates.get("int8_accuracy", {})
    return {
        "agreement_passed": agree.get("passed"), "agreement": agree.get("top1_agreement"),
        "confident_agreement": agree.get("confident_agreement"), "confident_n": agree.get("confident_n"),
        "confident_flips": agree.get("confident_flips"), "agreement_binomial_p": agree.get("binomial_p"),
        "agreement_passed_confident_rule": agree.get("passed_confident_rule"),
        "accuracy_passed": acc.get("passed"), "accuracy_passed_plain_rule": acc.get("passed_plain_rule"),
        "val_n": acc.get("n"), "accuracy_drop": acc.get("accuracy_drop"), "lost": acc.get("lost"), "won": acc.get("won"),
        "sign_test_p": acc.get("sign_test_p"),
    }  # fmt: skip


def _train_export_score(
    wf: Any,
    ws: SimHome,
    cfg: SimConfig,
    seed: int,
    *,
    init: Path | None,
    epochs: int | None,
    tag: str,
    score: bool = True,
    mode: str | None = None,
) -> RoundResult:
    """train_from_store -> export_from_store (gates) -> promote -> score_pool."""
    from edge_al.scoring import score_pool

    timings: dict[str, float] = {}
    t = time.perf_counter()
    ckpt_path = ws.settings.checkpoints_dir / f"{tag}.pt"
    ckpt = wf.train_from_store(
        ws.settings, ws.store, arch=cfg.arch, weights=cfg.weights, image_size=cfg.image_size, epochs=epochs, seed=seed,
        batch_size=cfg.train_batch_size, lr=cfg.lr, out=ckpt_path, init=init, mode=mode or cfg.mode, augment=cfg.augment, progress=False,
    )  # fmt: skip
    timings["train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with warnings.catch_warnings():
        # An INT8 gate failure warns and publishes the FP32 fallback: recorded below, not raised.
        warnings.simplefilter("ignore")
        mv, report = wf.export_from_store(
            ws.settings, ws.store, ckpt, calibration_size=cfg.calibration_size, sample_size=cfg.sample_size,
            seed=seed, registry=ws.registry, exporter=cfg.exporter, accuracy_control=cfg.accuracy_control, progress=False,
        )  # fmt: skip
    timings["export_s"] = time.perf_counter() - t
    ws.registry.promote(mv.version)
    Path(ckpt).unlink(missing_ok=True)  # the registry version keeps its own copy (checkpoint.pt)
    if score:
        t = time.perf_counter()
        score_pool(ws.settings, ws.store, ws.registry, device=cfg.device)
        timings["score_s"] = time.perf_counter() - t
    return RoundResult(mv.version, str(mv.meta.get("precision", "?")), bool(report.get("fallback")), timings, _gate_figures(report))


def _test_metrics(probs: np.ndarray, names: Sequence[str], truth: np.ndarray, classes: list[str]) -> dict[str, Any]:
    index = {c: i for i, c in enumerate(classes)}
    to_global = np.array([index.get(n, -1) for n in names], dtype=np.int64)
    pred = to_global[probs.argmax(1)] if len(probs) else np.zeros(0, np.int64)
    recall = {c: float(np.mean(pred[truth == k] == k)) for k, c in enumerate(classes) if np.any(truth == k)}
    return {
        "accuracy": float(np.mean(pred == truth)),
        "balanced_accuracy": float(np.mean(list(recall.values()))),
        "recall": recall,
    }


class _TestEvaluator:
    """The test-set figures of each published version. A head on a workspace backbone is evaluated
    as ``edge-al score`` rescores a pool: the first version of each backbone IR (backbone, published
    precision, runtime settings, views, size: ``scoring.embedding_key``) runs the test images through
    its IR, and later ones apply their head (``head.npz``) to those embeddings (float32 here)."""

    def __init__(self, images: np.ndarray, truth: np.ndarray, classes: list[str], device: str) -> None:
        self.images, self.truth, self.classes, self.device = images, truth, classes, device
        self.embeddings: dict[str, np.ndarray] = {}
        self.passes = 0  # versions whose IR ran the test images
        self.heads = 0  # versions evaluated by their head on kept embeddings

    def __call__(self, mv: ModelVersion) -> dict[str, Any]:
        from edge_al.engine import Engine
        from edge_al.scoring import embedding_key, head_probs, load_head

        head, key = load_head(mv), embedding_key(mv)
        if head is not None and key is not None and key in self.embeddings:
            self.heads += 1
            return _test_metrics(head_probs(*head, self.embeddings[key]), mv.labels, self.truth, self.classes)
        eng = Engine(mv.xml, device=self.device, batch=8)
        probs, emb = eng.infer(self.images)
        self.passes += 1
        if head is not None and key is not None:
            self.embeddings[key] = emb
        return _test_metrics(probs, eng.labels or mv.labels, self.truth, self.classes)


# -- the run -------------------------------------------------------------------------------------
def _progress(cfg: SimConfig, total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="model", desc="simulate", dynamic_ncols=True, disable=not cfg.progress, smoothing=0.1)


def _initial_set(pool_ids: np.ndarray, oracle: dict[int, str], n: int, seed: int) -> list[int]:
    """A uniform random draw of ``n`` pool samples, redrawn (up to 1,000 times) until it holds
    >= 2 classes; a rare class may well be missing, as it would be in practice."""
    rng = np.random.default_rng([seed, 20])
    n = min(n, len(pool_ids))
    for _ in range(1000):
        pick = rng.choice(pool_ids, size=n, replace=False)
        if len({oracle[int(i)] for i in pick}) >= 2:
            return sorted(int(i) for i in pick)
    raise InvalidInput("Could not draw an initial set with 2 classes: is the pool almost all one class?")


def _uses_features(cfg: SimConfig) -> bool:
    weights = cfg.weights or ("imagenet" if cfg.arch in PACKAGED_WEIGHTS else "none")
    return cfg.arch in PACKAGED_WEIGHTS and weights == "imagenet" and cfg.mode in (None, "auto", "head")


def _pool_features(wf: Any, base: SimHome, cfg: SimConfig, pool_ids: np.ndarray) -> np.ndarray | None:
    """float32 [len(pool_ids), D]: the base workspace's frozen backbone features of the whole pool
    (computed once; every workspace of the run shares them). None when the run trains no head."""
    if not _uses_features(cfg):
        return None
    from edge_al.features import FeatureCache

    side = cfg.image_size or base.settings.image_size_for(cfg.arch)
    backbone = wf.workspace_backbone(base.settings, base.store, cfg.arch, side, calibration_size=cfg.calibration_size)
    with FeatureCache(base.settings, backbone) as cache:
        feats, got = cache.get(base.store, pool_ids)
    if len(got) != len(pool_ids):
        raise InvalidInput("Some pool images could not be embedded; fix or remove them first.")
    return feats


def _test_features(base: SimHome, cfg: SimConfig, images: np.ndarray) -> np.ndarray:
    from edge_al.engine import Engine
    from edge_al.features import find_backbone

    backbone = find_backbone(base.settings)
    assert backbone is not None
    _, emb = Engine(backbone.fp32_xml, device=cfg.device, batch=8, precision="f32").infer(images)
    return emb


def _cold_start_set(features: np.ndarray, pool_ids: np.ndarray, n: int, seed: int) -> list[int]:
    """``n`` pool ids chosen with no labels at all, as ``edge-al select`` does: typical and diverse
    (TypiClust) on the features, a share farthest-first."""
    sel = acquisition.typical_diverse(features, min(n, len(pool_ids)), seed=seed, farthest_share=acquisition.COLD_START_FARTHEST_SHARE)
    return sorted(int(i) for i in pool_ids[sel.indices])


def _feature_baselines(
    features: np.ndarray, pool_ids: np.ndarray, oracle: dict[int, str], test_features: np.ndarray, test_truth: np.ndarray,
    classes: list[str], cfg: SimConfig,
) -> dict[str, Any]:  # fmt: skip
    """scikit-learn LogisticRegression (class_weight balanced) on the frozen FP32 features, standardized
    over the pool: every pool label, and random draws of the run's final label count (one per seed).
    The yardstick the issue names, fitted by another implementation with the head's regularisation
    (C = 1 / (2 HEAD_ALPHA n)); the rows above are the same idea through the whole product path
    (INT8, gates, rounds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from export.train import HEAD_ALPHA

    y = np.array([classes.index(oracle[int(i)]) for i in pool_ids])
    scaler = StandardScaler().fit(features)

    def fit_score(idx: np.ndarray) -> float:
        c = 1.0 / (2.0 * HEAD_ALPHA * len(idx))
        m = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(scaler.transform(features[idx]), y[idx])
        pred = m.predict(scaler.transform(test_features))
        return balanced_accuracy(test_truth, pred)

    budget = cfg.initial + cfg.rounds * cfg.batch
    draws = []
    for seed in cfg.seed_list:
        rng = np.random.default_rng([seed, 7])
        for _ in range(100):
            idx = rng.choice(len(y), size=min(budget, len(y)), replace=False)
            if len(np.unique(y[idx])) >= 2:
                break
        draws.append(fit_score(idx))
    return {
        "method": f"sklearn StandardScaler (pool) + LogisticRegression(C=1/(2*{HEAD_ALPHA:g}*n), class_weight='balanced') "
                  "on frozen FP32 backbone features",
        "all_labels": {"labels": len(y), "balanced_accuracy": fit_score(np.arange(len(y)))},
        "random": {"labels": int(min(budget, len(y))), "balanced_accuracy": float(np.mean(draws)),
                   "balanced_accuracy_sd": float(np.std(draws)), "per_seed": draws},
    }  # fmt: skip


def _reveal(ws: SimHome, ids: Iterable[int], oracle: dict[int, str], version: str | None = None) -> None:
    for sid in ids:
        ws.store.add_annotation(int(sid), "correct", oracle[int(sid)], ORACLE, version)


@dataclass
class _Data:
    """The run's data once prepared: the base workspace with the pool ingested and decoded, the
    oracle (sample id -> class), and the test set decoded (u8 [T, S, S, 3]) with its truth (int64 [T])."""

    split: DatasetSplit
    base: SimHome
    oracle: dict[int, str]
    pool_ids: np.ndarray
    test_images: np.ndarray
    test_truth: np.ndarray

    @property
    def classes(self) -> list[str]:
        return self.split.classes

    @property
    def rarest(self) -> str:
        return self.split.rarest


def _prepare_data(cfg: SimConfig, work: Path, say: Callable[[str], None]) -> _Data:
    """Split the data set, ingest and decode the pool once into the base workspace, decode the test set."""
    items = read_dataset(cfg.data)
    groups = read_groups(cfg.groups) if cfg.groups else None
    split = split_dataset(items, groups, cfg.test_fraction, cfg.split_seed)
    say(f"data: {len(items)} images, {len(split.classes)} classes; pool {len(split.pool)}, test {len(split.test)} "
        f"({'group' if split.grouped else 'stratified'} split); rarest class in the pool: {split.rarest} "
        f"({split.pool_counts[split.rarest]})")  # fmt: skip
    side = cfg.image_size or Settings().image_size_for(cfg.arch)
    base = SimHome(work / "base")
    for c in split.classes:
        base.store.add_label(c)
    ingest(base.store, base.settings, [p for p, _ in split.pool])
    cls_of = {str(p): c for p, c in split.pool}
    oracle = {s.id: cls_of[s.path] for s in base.store.samples()}
    pool_ids = np.array(sorted(oracle), dtype=np.int64)
    with ImageCache(base.settings.cache_dir, (side, side), images_storage(base.settings)) as cache:
        _, failed = cache.load_many(base.store.samples(pool_ids.tolist()))
    if failed:
        raise InvalidInput(f"{len(failed)} pool image(s) could not be decoded; fix or remove them first.")
    test_ws = SimHome(work / "test")
    ingest(test_ws.store, test_ws.settings, [p for p, _ in split.test])
    test_cls = {str(p): c for p, c in split.test}
    test_samples = test_ws.store.samples()
    with ImageCache(test_ws.settings.cache_dir, (side, side), images_storage(test_ws.settings)) as cache:
        test_images, failed = cache.load_many(test_samples)
    if failed:
        raise InvalidInput(f"{len(failed)} test image(s) could not be decoded; fix or remove them first.")
    cidx = {c: k for k, c in enumerate(split.classes)}
    test_truth = np.array([cidx[test_cls[s.path]] for s in test_samples], dtype=np.int64)
    test_ws.close()
    return _Data(split, base, oracle, pool_ids, test_images, test_truth)


class _Simulation:
    """One simulation run: every seed's shared round 0, each strategy's rounds, the cold-start row and
    the full-data reference, on the production path; collects the points ``results.json`` holds."""

    def __init__(self, cfg: SimConfig, work: Path, data: _Data, say: Callable[[str], None]) -> None:
        from export import workflow

        self.cfg, self.work, self.data, self.say, self.wf = cfg, work, data, say, workflow
        self.shared_cache = data.base.settings.cache_dir
        self.ref_seeds = (
            (cfg.seed_list[: cfg.reference_seeds] if cfg.reference_seeds is not None else cfg.seed_list) if cfg.reference else []
        )
        self.cold = _pool_features(workflow, data.base, cfg, data.pool_ids) if cfg.cold_start else None
        self.test_features = _test_features(data.base, cfg, data.test_images) if self.cold is not None else None
        self.evaluator = _TestEvaluator(data.test_images, data.test_truth, data.classes, cfg.device)
        rows = (*cfg.strategies, *((COLD_ROW,) if self.cold is not None else ()))
        self.rare_first: dict[str, dict[str, int | None]] = {s: {} for s in rows}
        self.points: list[dict[str, Any]] = []
        self.references: list[dict[str, Any]] = []
        self.initial_sets: dict[str, list[int]] = {}
        self.precisions: dict[str, int] = {}
        per_seed = 1 + (1 if cfg.cold_start else 0) + (len(cfg.strategies) + (1 if cfg.cold_start else 0)) * cfg.rounds
        self.bar = _progress(cfg, len(cfg.seed_list) * per_seed + len(self.ref_seeds))

    def evaluate(self, mv: ModelVersion) -> dict[str, Any]:
        return self.evaluator(mv)

    def point(self, strategy: str, seed: int, rnd: int, ws: SimHome, res: RoundResult, metrics: dict[str, Any], sel_s: float) -> None:
        _, names = ws.store.labeled()
        counts = _counts(names)
        rarest = self.data.rarest
        self.points.append({
            "strategy": strategy, "seed": seed, "round": rnd, "labels": len(names),
            "accuracy": metrics["accuracy"], "balanced_accuracy": metrics["balanced_accuracy"],
            "rarest_recall": metrics["recall"].get(rarest, float("nan")), "rarest_labeled": counts.get(rarest, 0),
            "classes_labeled": len(counts), "labeled_counts": counts, "recall": metrics["recall"],
            "version": res.version, "precision": res.precision, "int8_fallback": res.fallback, "int8_gates": res.gates,
            "select_s": round(sel_s, 3), **{k: round(v, 3) for k, v in res.timings.items()},
        })  # fmt: skip
        self.precisions[res.precision] = self.precisions.get(res.precision, 0) + 1

    def done_with(self, ws: SimHome) -> None:
        ws.close()
        if not self.cfg.keep_work:
            shutil.rmtree(ws.home, ignore_errors=True)

    def round_zero(self, folder: str, seed: int, ids: list[int]) -> tuple[SimHome, RoundResult, ModelVersion, dict[str, Any]]:
        """A workspace holding ``ids`` labeled, its model trained, exported, promoted and evaluated."""
        ws = clone_workspace(self.data.base, self.work / f"s{seed}" / folder, self.shared_cache)
        _reveal(ws, ids, self.data.oracle)
        res = _train_export_score(self.wf, ws, self.cfg, seed, init=None, epochs=self.cfg.epochs, tag="r00")
        mv = ws.registry.get(res.version)
        metrics = self.evaluate(mv)
        self.bar.update(1)
        return ws, res, mv, metrics

    def run_rounds(self, row: str, strategy: str, seed: int, r0: SimHome, mv0: ModelVersion) -> None:
        """Rounds 1..R of one strategy from a round-0 workspace, points recorded under ``row``."""
        from edge_al.selection import select_next

        cfg, oracle = self.cfg, self.data.oracle
        ws = clone_workspace(r0, self.work / f"s{seed}" / row.replace("/", "-"), self.shared_cache)
        prev = mv0
        for rnd in range(1, cfg.rounds + 1):
            self.bar.set_description(f"{row} seed {seed} round {rnd}/{cfg.rounds}")
            n_before = len(ws.store.labeled()[0])
            t = time.perf_counter()
            chosen = [c.sample_id for c in select_next(ws.settings, ws.store, ws.registry, cfg.batch, strategy, seed=seed * 1000 + rnd)]
            sel_s = time.perf_counter() - t
            _reveal(ws, chosen, oracle, prev.version)
            if self.rare_first[row][str(seed)] is None:
                hits = [k for k, sid in enumerate(chosen) if oracle[sid] == self.data.rarest]
                if hits:
                    self.rare_first[row][str(seed)] = n_before + hits[0] + 1
            init = prev.path / "checkpoint.pt" if cfg.warm_start else None
            epochs = (cfg.warm_epochs or cfg.epochs) if init else cfg.epochs
            res = _train_export_score(self.wf, ws, cfg, seed, init=init, epochs=epochs, tag=f"r{rnd:02d}", score=rnd < cfg.rounds)
            mv = ws.registry.get(res.version)
            self.point(row, seed, rnd, ws, res, self.evaluate(mv), sel_s)
            _prune(ws, keep={mv.version})
            prev = mv
            self.bar.update(1)
        last = self.points[-1]
        self.say(f"seed {seed} {row}: {last['labels']} labels, balanced accuracy {last['balanced_accuracy']:.3f}, "
                 f"rarest labeled {last['rarest_labeled']}")  # fmt: skip
        self.done_with(ws)

    def run_seed(self, seed: int) -> None:
        """Round 0 (one model per seed, shared by every strategy), then each strategy's rounds."""
        cfg, oracle, rarest = self.cfg, self.data.oracle, self.data.rarest
        self.bar.set_description(f"seed {seed} round 0 (shared)")
        init_ids = _initial_set(self.data.pool_ids, oracle, cfg.initial, seed)
        self.initial_sets[str(seed)] = init_ids
        r0, res0, mv0, m0 = self.round_zero("r0", seed, init_ids)
        found0 = any(oracle[i] == rarest for i in init_ids)
        for strategy in cfg.strategies:
            self.point(strategy, seed, 0, r0, res0, m0, 0.0)
            self.rare_first[strategy][str(seed)] = cfg.initial if found0 else None
        self.say(f"seed {seed} round 0: {len(init_ids)} labels, balanced accuracy {m0['balanced_accuracy']:.3f} "
                 f"({res0.precision}); rarest class {'in' if found0 else 'not in'} the initial set")  # fmt: skip
        for strategy in cfg.strategies:
            self.run_rounds(strategy, strategy, seed, r0, mv0)
        if self.cold is not None:
            self.run_cold_start(seed)
        self.done_with(r0)

    def run_cold_start(self, seed: int) -> None:
        """The cold-start row: round 0 chosen with no labels (TypiClust), then hybrid's rounds."""
        assert self.cold is not None
        self.bar.set_description(f"seed {seed} round 0 (cold start)")
        cold_ids = _cold_start_set(self.cold, self.data.pool_ids, self.cfg.initial, seed)
        rc, resc, mvc, mc = self.round_zero("r0-cold", seed, cold_ids)
        self.point(COLD_ROW, seed, 0, rc, resc, mc, 0.0)
        found = any(self.data.oracle[sid] == self.data.rarest for sid in cold_ids)
        self.rare_first[COLD_ROW][str(seed)] = self.cfg.initial if found else None
        self.run_rounds(COLD_ROW, COLD_STRATEGY, seed, rc, mvc)
        self.done_with(rc)

    def run_reference(self, seed: int) -> None:
        """The full-data reference: the whole pool labeled, same settings."""
        cfg, pool_ids = self.cfg, self.data.pool_ids
        self.bar.set_description(f"reference seed {seed} (all {len(pool_ids)} labels)")
        ws = clone_workspace(self.data.base, self.work / f"s{seed}" / "full", self.shared_cache)
        _reveal(ws, pool_ids.tolist(), self.data.oracle)
        other_mode = cfg.reference_mode not in (None, cfg.mode)
        # another mode than the rounds' trains for its own default epochs (export.workflow.train_from_store)
        epochs = cfg.reference_epochs or (None if other_mode else cfg.epochs)
        res = _train_export_score(self.wf, ws, cfg, seed, init=None, epochs=epochs, tag="full", score=False, mode=cfg.reference_mode)
        m = self.evaluate(ws.registry.get(res.version))
        self.references.append({"seed": seed, "labels": len(pool_ids), **m, "precision": res.precision, "mode": cfg.reference_mode or cfg.mode or "auto",
                                "epochs": epochs, **res.timings})  # fmt: skip
        self.say(f"reference seed {seed}: balanced accuracy {m['balanced_accuracy']:.3f}, accuracy {m['accuracy']:.3f}")
        self.bar.update(1)
        self.done_with(ws)

    def results(self, elapsed: float) -> dict[str, Any]:
        cfg, data = self.cfg, self.data
        baselines = (
            _feature_baselines(self.cold, data.pool_ids, data.oracle, self.test_features, data.test_truth, data.classes, cfg)
            if self.cold is not None and self.test_features is not None
            else {}
        )
        split = data.split
        return {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
            "dataset": {"classes": split.classes, "rarest": split.rarest, "grouped_split": split.grouped,
                        "pool": split.pool_counts, "test": split.test_counts},
            "initial_sets": self.initial_sets,
            "references": self.references,
            "rarest_first_found": self.rare_first,
            "precisions": self.precisions,
            "baselines": baselines,
            "points": self.points,
            "test_evaluations": {"ir": self.evaluator.passes, "head": self.evaluator.heads},
            "elapsed_s": round(elapsed, 1),
        }  # fmt: skip


def run_simulation(cfg: SimConfig, log_line: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the whole simulation; writes the reports into ``cfg.out`` and returns ``results.json``'s content."""
    cfg = cfg.validate()
    say = log_line or (lambda text: None)
    started = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    work = cfg.work_dir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    data = _prepare_data(cfg, work, say)
    # Gate fallbacks are recorded per point (precision, int8_fallback); their log lines would only
    # break the progress display.
    export_log = logging.getLogger("export")
    export_level = export_log.level
    export_log.setLevel(logging.ERROR)
    try:
        sim = _Simulation(cfg, work, data, say)
        try:
            for seed in cfg.seed_list:
                sim.run_seed(seed)
            for seed in sim.ref_seeds:
                sim.run_reference(seed)
        finally:
            sim.bar.close()
    finally:
        data.base.close()
        export_log.setLevel(export_level)
    results = sim.results(time.time() - started)
    results["summary"] = summarize(results)
    write_reports(results, out)
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return results


# -- analysis ------------------------------------------------------------------------------------
def _curves(points: list[dict[str, Any]], metric: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """strategy -> (labels [R+1], values [S, R+1]) with seeds as rows (rounds aligned)."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for strategy in dict.fromkeys(p["strategy"] for p in points):
        rows = [p for p in points if p["strategy"] == strategy]
        seeds = sorted({p["seed"] for p in rows})
        rounds = sorted({p["round"] for p in rows})
        vals = np.full((len(seeds), len(rounds)), np.nan)
        labs = np.full((len(seeds), len(rounds)), np.nan)
        for p in rows:
            i, j = seeds.index(p["seed"]), rounds.index(p["round"])
            vals[i, j] = p[metric]
            labs[i, j] = p["labels"]
        out[strategy] = (np.nanmean(labs, axis=0), vals)
    return out


def labels_to_reach(labels: np.ndarray, values: np.ndarray, target: float) -> float | None:
    """The first label count where the mean curve reaches ``target`` (linear interpolation
    between rounds); None when it never does."""
    mean = np.nanmean(values, axis=0) if values.ndim == 2 else values
    for j in range(len(mean)):
        if mean[j] >= target:
            if j == 0:
                return float(labels[0])
            x0, x1, y0, y1 = labels[j - 1], labels[j], mean[j - 1], mean[j]
            return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0)) if y1 > y0 else float(x1)
    return None


def _aulc(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Area under each seed's curve, normalised by the label range (so it is a mean score)."""
    span = float(labels[-1] - labels[0]) or 1.0
    y = values
    return np.sum((y[:, 1:] + y[:, :-1]) * 0.5 * np.diff(labels)[None, :], axis=1) / span


def _se(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Labels to 95% of the full-data balanced accuracy, to random's final balanced accuracy,
    AULC, paired wins against random, and rarest-class discovery, per strategy."""
    points = results["points"]
    ba = _curves(points, "balanced_accuracy")
    acc = _curves(points, "accuracy")
    refs = [r["balanced_accuracy"] for r in results["references"]]
    ref_ba = float(np.mean(refs)) if refs else None
    target = 0.95 * ref_ba if ref_ba is not None else None
    r_labels, r_vals = ba["random"]
    random_final = float(np.nanmean(r_vals[:, -1]))
    random_final_labels = float(r_labels[-1])
    seeds = sorted({p["seed"] for p in points})
    out: dict[str, Any] = {
        "reference_balanced_accuracy": ref_ba,
        "reference_accuracy": float(np.mean([r["accuracy"] for r in results["references"]])) if refs else None,
        "target_balanced_accuracy": target,
        "random_final_balanced_accuracy": random_final,
        "random_final_labels": random_final_labels,
        "strategies": {},
    }
    first = results["rarest_first_found"]
    to_target_random = labels_to_reach(r_labels, r_vals, target) if target is not None else None
    for strategy, (labels, vals) in ba.items():
        s: dict[str, Any] = {}
        s["final_balanced_accuracy"] = float(np.nanmean(vals[:, -1]))
        s["final_balanced_accuracy_se"] = _se(vals[:, -1])
        s["final_accuracy"] = float(np.nanmean(acc[strategy][1][:, -1]))
        aulc = _aulc(labels, vals)
        s["aulc"] = float(np.mean(aulc))
        s["aulc_se"] = _se(aulc)
        if target is not None:
            n = labels_to_reach(labels, vals, target)
            s["labels_to_95pct_reference"] = n
            s["ratio_to_random_95pct"] = n / to_target_random if n is not None and to_target_random else None
        n = labels_to_reach(labels, vals, random_final)
        s["labels_to_random_final"] = n
        s["ratio_to_random_final"] = n / random_final_labels if n is not None else None
        # Paired comparisons with random: same seed, same round (round 0 is shared, so skipped).
        wins = ties = losses = 0
        per_seed_aulc_wins = 0
        random_aulc = _aulc(r_labels, r_vals)
        for i in range(vals.shape[0]):
            for j in range(1, vals.shape[1]):
                d = vals[i, j] - r_vals[i, j]
                if abs(d) < 1e-9:
                    ties += 1
                elif d > 0:
                    wins += 1
                else:
                    losses += 1
            per_seed_aulc_wins += int(aulc[i] > random_aulc[i] + 1e-12)
        s["paired_wins"], s["paired_ties"], s["paired_losses"] = wins, ties, losses
        s["seeds_aulc_above_random"] = per_seed_aulc_wins
        found = [first[strategy].get(str(seed)) for seed in seeds]
        hit = [f for f in found if f is not None]
        s["rarest_found_seeds"] = len(hit)
        s["rarest_first_labels"] = found
        # Not found within the budget counts as the budget + 1 (a lower bound): median is robust to that.
        censored = [f if f is not None else int(labels[-1]) + 1 for f in found]
        s["rarest_first_median"] = float(np.median(censored))
        s["rarest_first_mean_censored"] = float(np.mean(censored))
        s["initial_classes_mean"] = float(np.nanmean(_curves(points, "classes_labeled")[strategy][1][:, 0]))
        # largest drop of the mean curve between consecutive rounds, and the standard error there
        mean = np.nanmean(vals, axis=0)
        drops = [(float(mean[j] - mean[j + 1]), _se(vals[:, j + 1] - vals[:, j])) for j in range(len(mean) - 1)]
        s["largest_drop"], s["largest_drop_se"] = max(drops, default=(0.0, 0.0))
        rare_vals = _curves(points, "rarest_labeled")[strategy][1]
        s["rarest_labeled_final"] = float(np.nanmean(rare_vals[:, -1]))
        rr = _curves(points, "rarest_recall")[strategy][1]
        s["rarest_recall_final"] = float(np.nanmean(rr[:, -1]))
        out["strategies"][strategy] = s
    rnd = out["strategies"]["random"]
    for s in out["strategies"].values():
        s["rarest_speedup_vs_random"] = rnd["rarest_first_mean_censored"] / s["rarest_first_mean_censored"]
    return out


# -- reports -------------------------------------------------------------------------------------
_CSV_FIELDS = [
    "strategy", "seed", "round", "labels", "accuracy", "balanced_accuracy", "rarest_recall", "rarest_labeled",
    "classes_labeled", "version", "precision", "int8_fallback", "select_s", "train_s", "export_s", "score_s",
]  # fmt: skip


def write_reports(results: dict[str, Any], out: Path) -> None:
    """points.csv, results.json, curves.png, rarest.png, summary.md into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    classes = results["dataset"]["classes"]
    with open(out / "points.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(_CSV_FIELDS + [f"recall_{c}" for c in classes] + [f"labeled_{c}" for c in classes])
        for p in results["points"]:
            w.writerow(
                [_fmt(p.get(k, "")) for k in _CSV_FIELDS]
                + [_fmt(p["recall"].get(c, "")) for c in classes]
                + [p["labeled_counts"].get(c, 0) for c in classes]
            )
    with open(out / "results.json", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, default=_json_default)
        f.write("\n")
    _plot(results, out)
    (out / "summary.md").write_text(_summary_md(results), encoding="utf-8")


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v)}")


_COLORS = {
    "random": "black",
    "hybrid": "tab:red",
    "entropy": "tab:blue",
    "margin": "tab:orange",
    "fre": "tab:green",
    "knn": "tab:purple",
    COLD_ROW: "tab:pink",
    "least-confidence": "tab:brown",
}


def _plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = results["points"]
    summary = results["summary"]
    seeds = len({p["seed"] for p in points})

    def panel(ax: Any, metric: str, title: str, ylabel: str) -> None:
        for strategy, (labels, vals) in _curves(points, metric).items():
            mean = np.nanmean(vals, axis=0)
            se = np.array([_se(vals[:, j]) for j in range(vals.shape[1])])
            style = {"lw": 2.5 if strategy in ("random", "hybrid") else 1.4, "color": _COLORS.get(strategy, "tab:gray")}
            ax.plot(labels, mean, marker="o", ms=3, label=strategy, **style)
            ax.fill_between(labels, mean - se, mean + se, alpha=0.15, color=style.get("color"))
        ax.set_title(title)
        ax.set_xlabel("labels")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    panel(axes[0], "accuracy", "Accuracy", "test accuracy")
    panel(axes[1], "balanced_accuracy", "Balanced accuracy", "test balanced accuracy")
    if summary.get("reference_balanced_accuracy") is not None:
        axes[1].axhline(summary["reference_balanced_accuracy"], color="grey", ls="--", lw=1, label="full-data reference")
        axes[1].axhline(summary["target_balanced_accuracy"], color="grey", ls=":", lw=1, label="95% of reference")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{Path(results['config']['data']).name}: mean ± standard error over {seeds} seeds")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)

    rarest = results["dataset"]["rarest"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    panel(axes[0], "rarest_recall", f"Recall of the rarest class ({rarest})", "test recall")
    panel(axes[1], "rarest_labeled", f"{rarest} samples labeled", "count")
    axes[1].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"{Path(results['config']['data']).name}: rarest class, mean ± standard error over {seeds} seeds")
    fig.tight_layout()
    fig.savefig(out / "rarest.png", dpi=110)
    plt.close(fig)


def _n(v: float | None, fmt: str = "{:.0f}") -> str:
    return "not reached" if v is None else fmt.format(v)


def _summary_header(results: dict[str, Any]) -> list[str]:
    """The run's data set, budget, model and wall time."""
    cfg, ds = results["config"], results["dataset"]
    seeds = sorted({p["seed"] for p in results["points"]})
    rounds = max(p["round"] for p in results["points"])
    lines = [
        f"# Active-learning simulation: {Path(cfg['data']).name}",
        "",
        f"- Pool {sum(ds['pool'].values())} images, test {sum(ds['test'].values())} images "
        f"({'group split from ' + Path(cfg['groups']).name if ds['grouped_split'] else 'stratified split'}, "
        f"{cfg['test_fraction']:.0%} held out per class, split seed {cfg['split_seed']}).",
        f"- Pool per class: {', '.join(f'{k} {v}' for k, v in ds['pool'].items())}; test: {', '.join(f'{k} {v}' for k, v in ds['test'].items())}.",
        f"- Rarest class (fewest pool images): **{ds['rarest']}**.",
        f"- {len(seeds)} seeds ({', '.join(map(str, seeds))}), initial {cfg['initial']} random labels, batch {cfg['batch']}, "
        f"{rounds} rounds: {cfg['initial']} to {cfg['initial'] + rounds * cfg['batch']} labels.",
        f"- Model: {cfg['arch']} at {cfg['image_size'] or 'its default'} px, weights {cfg['weights'] or 'default'}, "
        f"mode {cfg.get('mode') or 'auto'}, augment {cfg.get('augment') or 'none'}, {cfg['epochs']} epochs when fine-tuning"
        + (f" ({cfg['warm_epochs'] or cfg['epochs']} per warm-started round)" if cfg["warm_start"] else ", no warm start")
        + f"; export with INT8 gates, calibration {cfg['calibration_size']} pool images. Published precisions: "
        + ", ".join(f"{k} {v}" for k, v in sorted(results["precisions"].items()))
        + ".",
        *_gate_lines(results["points"]),
        *_evaluation_line(results),
        f"- Wall time: {results['elapsed_s'] / 60:.1f} min.",
        "",
    ]
    return lines


def _evaluation_line(results: dict[str, Any]) -> list[str]:
    """How the published versions were run on the test set (absent from runs before it was counted)."""
    ev = results.get("test_evaluations")
    if not ev:
        return []
    return [f"- Test set: {ev['ir']} published versions ran it through their IR; {ev['head']} others, each a head on the "
            "same backbone IR as one of those, were evaluated as `edge-al score` rescores a pool (the head on that "
            "IR's test-image embeddings)."]  # fmt: skip


def _gate_lines(points: list[dict[str, Any]]) -> list[str]:
    """Why round models fell back to FP32, and what the accuracy gate's sign test changed."""
    rounds = {(p["strategy"], p["seed"], p["round"]): p for p in points if p.get("int8_gates")}.values()  # round 0 is shared
    gates = [p["int8_gates"] for p in rounds]
    if not gates:
        return []
    fell = [g for g in gates if not (g["agreement_passed"] and g["accuracy_passed"])]
    rescued = [g for g in gates if g["accuracy_passed"] and g["accuracy_passed_plain_rule"] is False]
    n_val = sorted(g["val_n"] for g in gates if g["val_n"] is not None)
    pairs = ", ".join(f"{g['lost']}-{g['won']}" for g in rescued[:12]) + ("..." if len(rescued) > 12 else "")
    return (
        [
            f"- INT8 gates over {len(gates)} round models: {len(gates) - len(fell)} passed both; fallbacks: "
            f"{sum(not g['agreement_passed'] for g in fell)} on agreement, {sum(not g['accuracy_passed'] for g in fell)} on accuracy. "
            f"Validation images per round {n_val[0]} to {n_val[-1]}; the accuracy gate passed {len(rescued)} models whose drop "
            f"exceeded max_drop without evidence of a loss (sign test p >= 0.05; lost-won of those: {pairs or 'none'})."
        ]
        if n_val
        else [f"- INT8 gates over {len(gates)} round models: {len(gates) - len(fell)} passed both."]
    ) + _agreement_line(gates)


def _agreement_line(gates: list[dict[str, Any]]) -> list[str]:
    """What the agreement gate's binomial test passed that 'every decided image agrees to min_agreement' would not."""
    tested = [g for g in gates if g.get("agreement_passed_confident_rule") is not None]
    if not tested:
        return []
    rescued = [g for g in tested if g["agreement_passed"] and not g["agreement_passed_confident_rule"]]
    flips = ", ".join(f"{g['confident_flips']}/{g['confident_n']}" for g in rescued[:12]) + ("..." if len(rescued) > 12 else "")
    low = sorted(g["agreement"] for g in tested)
    return [
        f"- Agreement gate: all-image agreement {low[0]:.3f} to {low[-1]:.3f}; {len(rescued)} models passed with decided-image "
        f"flips above 1 - min_agreement that are no evidence of more (binomial p >= 0.05; flipped/decided: {flips or 'none'})."
    ]


def _reference_how(ref: dict[str, Any]) -> str:
    """ ", mode finetune, 4 epochs, INT8" for a reference trained otherwise than the rounds' default; "" for older results."""
    if ref.get("mode") in (None, "auto", "head"):
        return ""
    return f", mode {ref['mode']}, {ref['epochs'] or 'default'} epochs, {ref.get('precision', '?').upper()}"


def _summary_tables(results: dict[str, Any]) -> list[str]:
    """The reference, each strategy against random, the frozen-feature baseline and the curve shapes."""
    sm = results["summary"]
    lines: list[str] = []
    if sm["reference_balanced_accuracy"] is not None:
        refs = results["references"]
        lines += [
            f"Full-data reference ({len(refs)} seed(s), all {refs[0]['labels']} pool labels{_reference_how(refs[0])}): balanced accuracy "
            f"**{sm['reference_balanced_accuracy']:.3f}** (accuracy {sm['reference_accuracy']:.3f}); "
            f"95% of it: {sm['target_balanced_accuracy']:.3f}.",
            "",
        ]
    lines += [
        f"Random's final balanced accuracy: {sm['random_final_balanced_accuracy']:.3f} at {sm['random_final_labels']:.0f} labels.",
        "",
        "| strategy | final BA ± SE | final acc | AULC (BA) ± SE | labels to 95% ref | ratio to random | labels to random's final BA | "
        "ratio | paired wins/ties/losses vs random | seeds AULC > random |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in sm["strategies"].items():
        lines.append(
            f"| {name} | {s['final_balanced_accuracy']:.3f} ± {s['final_balanced_accuracy_se']:.3f} | {s['final_accuracy']:.3f} | "
            f"{s['aulc']:.3f} ± {s['aulc_se']:.3f} | {_n(s.get('labels_to_95pct_reference'))} | "
            f"{_n(s.get('ratio_to_random_95pct'), '{:.2f}')} | {_n(s['labels_to_random_final'])} | "
            f"{_n(s['ratio_to_random_final'], '{:.2f}')} | "
            + ("—" if name == "random" else f"{s['paired_wins']}/{s['paired_ties']}/{s['paired_losses']}")
            + f" | {'—' if name == 'random' else s['seeds_aulc_above_random']} |"
        )
    base = results.get("baselines") or {}
    if base:
        lines += [
            "",
            f"Frozen-feature baseline ({base['method']}): all {base['all_labels']['labels']} pool labels "
            f"{base['all_labels']['balanced_accuracy']:.3f}; {base['random']['labels']} random labels "
            f"{base['random']['balanced_accuracy']:.3f} ± {base['random']['balanced_accuracy_sd']:.3f} (SD over seeds).",
        ]
    lines += [
        "",
        "| strategy | classes in the initial set (mean) | largest drop of the mean curve between rounds (SE of the paired change) |",
        "|---|---|---|",
    ]
    for name, s in sm["strategies"].items():
        lines.append(f"| {name} | {s['initial_classes_mean']:.1f} | {s['largest_drop']:+.3f} ({s['largest_drop_se']:.3f}) |")
    return lines


def _summary_rarest(results: dict[str, Any]) -> list[str]:
    """When each strategy first labeled the rarest class."""
    ds, sm = results["dataset"], results["summary"]
    seeds = sorted({p["seed"] for p in results["points"]})
    lines: list[str] = []
    lines += [
        "",
        f"## Rarest class ({ds['rarest']})",
        "",
        "Labels spent when the first rarest-class sample was labeled, per seed (`—`: not within the budget; "
        "the initial set counts as its size). The censored mean counts a miss as budget + 1, so it flatters misses.",
        "",
        "| strategy | seeds found | first found at (per seed) | median | censored mean | speed-up vs random | "
        "labeled at the end | final recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in sm["strategies"].items():
        per = ", ".join("—" if v is None else str(v) for v in s["rarest_first_labels"])
        lines.append(
            f"| {name} | {s['rarest_found_seeds']}/{len(seeds)} | {per} | {s['rarest_first_median']:.0f} | "
            f"{s['rarest_first_mean_censored']:.1f} | {s['rarest_speedup_vs_random']:.2f}x | {s['rarest_labeled_final']:.1f} | "
            f"{s['rarest_recall_final']:.3f} |"
        )
    return lines


def _summary_md(results: dict[str, Any]) -> str:
    lines = [*_summary_header(results), *_summary_tables(results), *_summary_rarest(results)]
    lines += [
        "",
        "- BA: balanced accuracy (mean per-class recall on the test set, every class counted, unknown ones as 0).",
        "- AULC: area under the mean-BA-vs-labels curve divided by the label range, per seed, then mean ± SE.",
        "- Labels to a target: first crossing of the mean curve, interpolated linearly between rounds.",
        "- Paired wins: same seed and round (same initial set, split and training seed), rounds 1..R.",
        "",
        "![curves](curves.png)",
        "",
        "![rarest](rarest.png)",
        "",
    ]
    return "\n".join(lines)
