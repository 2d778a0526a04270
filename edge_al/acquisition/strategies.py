"""Query strategies: one small class each, a shared base, and ``select()`` dispatching by name.

Each strategy's constructor only stores keyword parameters; ``QueryStrategy.select`` validates
the pool inputs and the parameters in one place, applies ``exclude``, caps ``n`` at the number
of candidates, and hands the rest to the strategy's ``_select``.

=================  ===========================================================================
name               ranks candidates by
=================  ===========================================================================
random             a seeded uniform draw without replacement
least-confidence   ``1 - max p`` (top-n, ties to the lower pool position)
margin             ``1 - (p1 - p2)``
entropy            entropy / log(C)
fre                class-aware PCA feature reconstruction error (see ``novelty``)
knn                cosine distance to the nearest labeled embedding
hybrid (default)   weighted rank-normalised uncertainty + novelty, round-robin across predicted
                   classes (classes rarest among labels first), skipping near-duplicates
typiclust          cold start, no model needed: the most typical row of each of the largest
                   clusters no label covers yet (``coldstart``; ignores ``probs``)
=================  ===========================================================================
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ._validation import check_choice, check_embedding_matrix, check_float, check_int, check_probs, param_error
from .batch import rank_normalize, stratified_diverse, top_n
from .embeddings import EmbeddingSource, as_source
from .index import EXACT_MAX_LABELED, NearestLabeled
from .memo import TypicalityMemo
from .novelty import compute_novelty, l2_normalize
from .uncertainty import entropy, least_confidence, margin

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "Entropy",
    "FeatureReconstructionError",
    "Hybrid",
    "KNNDistance",
    "LeastConfidence",
    "Margin",
    "Pool",
    "QueryStrategy",
    "RandomSampling",
    "Selection",
    "TypiClust",
    "get_strategy",
    "novelty_scores",
    "select",
]

STRATEGIES: tuple[str, ...] = (
    "random",
    "least-confidence",
    "margin",
    "entropy",
    "fre",
    "knn",
    "hybrid",
    "typiclust",
)
DEFAULT_STRATEGY = "hybrid"

_NOVELTY_DEFAULTS: dict[str, Any] = {
    "variance": 0.95,
    "max_components": 32,
    "min_class_samples": 3,
    "labeled_chunk_size": 1024,
    "exact_max_labeled": EXACT_MAX_LABELED,
}


@dataclass(frozen=True, eq=False)
class Selection:
    """A ranked batch.

    ``indices`` int64 ``[n]`` pool positions, best first (for ``hybrid``: in round-robin order); ``score`` float32 ``[n]`` the strategy's
    final score for each; ``components`` name -> float32 ``[n]`` every component score that went
    into it (raw values, not rank-normalised); ``strategy`` the strategy name.
    """

    indices: np.ndarray
    score: np.ndarray
    components: dict[str, np.ndarray] = field(default_factory=dict)
    strategy: str = ""

    def __len__(self) -> int:
        return int(self.indices.size)


@dataclass(frozen=True, eq=False)
class Pool:
    """Validated inputs: ``probs`` float32 ``[N, C]``, ``source`` ``[N, D]``, ``labeled``
    L2-normalised float32 ``[M, D]``, ``labels`` int64 ``[M]``, ``candidates`` int64 ``[K]``
    ascending pool rows that may be selected; ``novelty`` component name -> float32 ``[N]``
    scores computed elsewhere (the workspace's cached k-NN distances), used instead of computing;
    ``clusters`` and ``typicality``: the caller's cached k-means and typicality memo (``select``)."""

    probs: np.ndarray
    source: EmbeddingSource
    labeled: np.ndarray
    labels: np.ndarray
    candidates: np.ndarray
    novelty: Mapping[str, np.ndarray] = field(default_factory=dict)
    clusters: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None
    typicality: TypicalityMemo | None = None

    def novelty_scores(self, params: dict[str, Any], wanted: tuple[str, ...], chunk_size: int) -> dict[str, np.ndarray]:
        """The ``wanted`` novelty components (``fre``, ``knn``) float32 ``[N]``: given ones
        as they are, the others computed in one pass over the pool."""
        out = {k: self.novelty[k] for k in wanted if k in self.novelty}
        todo = [k for k in wanted if k not in out]
        if todo:
            out.update(
                compute_novelty(
                    self.probs, self.source, self.labeled, self.labels,
                    fre="fre" in todo, knn="knn" in todo, chunk_size=chunk_size, **_novelty_kwargs(params),
                )
            )  # fmt: skip
        return out

    @property
    def num_classes(self) -> int:
        return int(self.probs.shape[1])


def _check_pool(
    probs: object,
    embeddings: EmbeddingSource | np.ndarray,
    labeled_embeddings: object,
    labeled_labels: object,
    num_classes: object,
    exclude: object,
    novelty: Mapping[str, np.ndarray] | None = None,
    clusters: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None,
    typicality: TypicalityMemo | None = None,
) -> Pool:
    p = check_probs(probs)
    n_rows, c = p.shape
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes != c):
        raise param_error("num_classes", f"an int equal to probs.shape[1]={c}", num_classes)
    source = as_source(embeddings)
    if len(source) != n_rows:
        raise ValueError(f"The 'embeddings' parameter must have one row per row of 'probs' ({n_rows}). Got {len(source)} rows instead.")
    lab = check_embedding_matrix("labeled_embeddings", labeled_embeddings, source.dim)
    if not np.isfinite(lab).all():
        raise ValueError("The 'labeled_embeddings' parameter must be finite. Got NaN or inf instead.")
    y = np.asarray(labeled_labels)
    if y.size == 0:
        y = np.empty(0, dtype=np.int64)
    if y.ndim != 1 or y.shape[0] != lab.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"The 'labeled_labels' parameter must be an int array [M] with M={lab.shape[0]} "
            f"(one class index per labeled embedding). Got shape {y.shape} and dtype {y.dtype} instead."
        )
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= c):
        raise ValueError(
            f"The 'labeled_labels' parameter must hold class indices in [0, {c}). Got values in [{y.min()}, {y.max()}] instead."
        )
    if exclude is None:
        candidates = np.arange(n_rows, dtype=np.int64)
    else:
        ex = np.asarray(exclude)
        if ex.dtype != np.bool_ or ex.shape != (n_rows,):
            raise ValueError(
                f"The 'exclude' parameter must be a bool mask of shape ({n_rows},). Got shape {ex.shape} and dtype {ex.dtype} instead."
            )
        candidates = np.flatnonzero(~ex).astype(np.int64)
    return Pool(p, source, l2_normalize(lab), y, candidates, _check_novelty(novelty, n_rows), clusters, typicality)


def _check_novelty(novelty: Mapping[str, np.ndarray] | None, n_rows: int) -> dict[str, np.ndarray]:
    """Precomputed novelty scores as float32 ``[n_rows]`` arrays, keys ``fre``/``knn`` only."""
    out: dict[str, np.ndarray] = {}
    for key, value in (novelty or {}).items():
        arr = np.asarray(value)
        if key not in ("fre", "knn") or arr.shape != (n_rows,) or not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(
                f"The 'novelty' parameter must map 'fre'/'knn' to float arrays of shape ({n_rows},). "
                f"Got {key!r} with shape {arr.shape} and dtype {arr.dtype} instead."
            )
        out[key] = arr.astype(np.float32, copy=False)
    return out


def _empty(strategy: str) -> Selection:
    return Selection(np.empty(0, np.int64), np.empty(0, np.float32), {}, strategy)


class QueryStrategy:
    """Base: stores parameters, validates inputs, applies ``exclude`` and the cap on ``n``.

    Subclasses set ``name`` and ``defaults`` (every accepted parameter with its default),
    implement ``_select`` and may extend ``_check_params``.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        self.params = params

    def get_params(self) -> dict[str, Any]:
        """Every parameter, defaults filled in."""
        return {**self.defaults, **self.params}

    def _check_params(self) -> dict[str, Any]:
        unknown = sorted(set(self.params) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(f"The {unknown[0]!r} parameter is not valid for strategy '{self.name}'. Valid parameters: {valid}.")
        return self.get_params()

    def select(
        self,
        n: int,
        probs: np.ndarray | None,
        embeddings: EmbeddingSource | np.ndarray,
        labeled_embeddings: np.ndarray,
        labeled_labels: np.ndarray,
        *,
        num_classes: int | None = None,
        seed: int = 0,
        chunk_size: int = 65536,
        exclude: np.ndarray | None = None,
        novelty: Mapping[str, np.ndarray] | None = None,
        clusters: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None,
        typicality: TypicalityMemo | None = None,
    ) -> Selection:
        """Pick up to ``n`` pool rows; see ``edge_al.acquisition.select`` for the arguments."""
        n = check_int("n", n)
        chunk_size = check_int("chunk_size", chunk_size)
        seed = check_int("seed", seed, low=0)
        params = self._check_params()
        pool = _check_pool(probs, embeddings, labeled_embeddings, labeled_labels, num_classes, exclude, novelty, clusters, typicality)
        if pool.candidates.size == 0:
            return _empty(self.name)
        return self._select(pool, min(n, pool.candidates.size), params, seed=seed, chunk_size=chunk_size)

    def _select(self, pool: Pool, n: int, params: dict[str, Any], *, seed: int, chunk_size: int) -> Selection:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


class RandomSampling(QueryStrategy):
    """Uniform without replacement; the score is the seeded random key (higher first)."""

    name = "random"

    def _select(self, pool: Pool, n: int, params: dict[str, Any], *, seed: int, chunk_size: int) -> Selection:
        keys = np.random.default_rng(seed).random(pool.candidates.size, dtype=np.float32)
        full = np.zeros(pool.probs.shape[0], dtype=np.float32)
        full[pool.candidates] = keys
        idx = top_n(full, pool.candidates, n)
        return Selection(idx, full[idx], {}, self.name)


class _ScoreStrategy(QueryStrategy):
    """Top-n by one per-sample score over the whole pool."""

    component: ClassVar[str] = ""

    def _scores(self, pool: Pool, params: dict[str, Any], chunk_size: int) -> np.ndarray:
        raise NotImplementedError

    def _select(self, pool: Pool, n: int, params: dict[str, Any], *, seed: int, chunk_size: int) -> Selection:
        scores = self._scores(pool, params, chunk_size)
        idx = top_n(scores, pool.candidates, n)
        s = scores[idx].astype(np.float32)
        return Selection(idx, s, {self.component: s.copy()}, self.name)


class LeastConfidence(_ScoreStrategy):
    """Highest ``1 - max p`` first."""

    name, component = "least-confidence", "least_confidence"

    def _scores(self, pool: Pool, params: dict[str, Any], chunk_size: int) -> np.ndarray:
        return least_confidence(pool.probs)


class Margin(_ScoreStrategy):
    """Smallest top-1/top-2 gap first (score ``1 - (p1 - p2)``)."""

    name, component = "margin", "margin"

    def _scores(self, pool: Pool, params: dict[str, Any], chunk_size: int) -> np.ndarray:
        return margin(pool.probs)


class Entropy(_ScoreStrategy):
    """Highest normalised entropy first."""

    name, component = "entropy", "entropy"

    def _scores(self, pool: Pool, params: dict[str, Any], chunk_size: int) -> np.ndarray:
        return entropy(pool.probs)


def _check_novelty_params(params: dict[str, Any]) -> dict[str, Any]:
    return {
        **params,
        "variance": check_float("variance", params["variance"], low=0.0, high=1.0, low_inclusive=False),
        "max_components": check_int("max_components", params["max_components"], low=0, high=4096),
        "min_class_samples": check_int("min_class_samples", params["min_class_samples"], low=3),
        "labeled_chunk_size": check_int("labeled_chunk_size", params["labeled_chunk_size"], low=1),
        "exact_max_labeled": check_int("exact_max_labeled", params["exact_max_labeled"], low=0),
    }


def _novelty_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    return {k: params[k] for k in _NOVELTY_DEFAULTS}


class _NoveltyStrategy(_ScoreStrategy):
    """Top-n by one novelty score (``component``: fre or knn) against the labeled embeddings."""

    defaults = _NOVELTY_DEFAULTS

    def _check_params(self) -> dict[str, Any]:
        return _check_novelty_params(super()._check_params())

    def _scores(self, pool: Pool, params: dict[str, Any], chunk_size: int) -> np.ndarray:
        return pool.novelty_scores(params, (self.component,), chunk_size)[self.component]


class FeatureReconstructionError(_NoveltyStrategy):
    """Highest class-aware PCA reconstruction error first (params: variance, max_components,
    min_class_samples)."""

    name, component = "fre", "fre"


class KNNDistance(_NoveltyStrategy):
    """Farthest (cosine) from the nearest labeled embedding first; exact, ``O(N * M * D)``."""

    name, component = "knn", "knn"


_COMPONENTS = ("least_confidence", "margin", "entropy", "fre", "knn")


class Hybrid(QueryStrategy):
    """Coverage + uncertainty, budget-aware (the default, ``coverage=True``); or uncertainty +
    novelty, stratified across predicted classes and diversified (``coverage=False``).

    Budget-aware (``coverage_per_class``, 15 by default): with ``M`` labels and ``C`` classes, a
    fraction ``max(0, 1 - M / (coverage_per_class * C))`` of each batch comes from coverage (below)
    and the rest is the most uncertain candidates by margin. Coverage wins while labels are few,
    margin once each class has about 15 (Hacohen et al., ICML 2022: typical samples at low budgets,
    uncertainty at high ones). Measured with the workspace head on frozen features
    (``docs/simulation/README.md``): on magnetic_tile, 20 -> 200 labels, this beat both pure coverage
    and pure margin in learning-curve area; ``coverage_per_class=None`` keeps coverage throughout.

    Coverage (measured on magnetic_tile and digits with frozen pretrained features, docs/simulation):
    k-means the pool into ``M + n`` clusters (``coldstart.typical_diverse``), visit the clusters
    that hold no labeled sample, largest first, and take from each the candidate with the best
    ``(1 - w) * typicality rank + w * uncertainty rank`` (uncertainty: 1 - margin). The weight
    ``w`` (``uncertainty_weight``) is ``"auto"`` by default: the square root of the pool's
    mean top-1 probability, i.e. trust the model's uncertainty about as much as the model trusts
    itself (the root leans towards uncertainty: 0.88 rather than 0.78 on magnetic_tile, whose pool
    is mostly one confidently predicted class; measured slightly better there and on digits). The
    clusters do the exploring either way: at low budgets the picks are typical samples of uncovered
    modes, which is what wins there (Hacohen et al., ICML 2022).

    Stratified (``coverage=False``):

    1. ``score = sum_i w_i * rank_normalise(component_i) / sum_i w_i`` over the candidates, with
       ``weights`` over ``least_confidence``, ``margin``, ``entropy``, ``fre``, ``knn``; the
       default ``{"entropy": .25, "margin": .25, "fre": .5}`` averages uncertainty (mean of
       entropy and margin) with novelty (FRE) equally. ``knn`` is exact over the whole pool
       (``O(N * M * D)``), so it is off by default.
    2. Round-robin across predicted classes, classes with the fewest labeled samples first
       (ties: lower class index), each class offering its best ``candidate_factor * n``.
    3. A candidate whose cosine similarity to an already selected row exceeds
       ``similarity_threshold`` is set aside, and used only if the batch cannot be filled
       otherwise (round-robin again, under a threshold relaxed in steps; see
       ``batch.stratified_diverse``). ``stratify=False`` ranks all candidates as one class.

    The returned order is the round-robin order, so ``score`` is not monotonic across classes.
    Only the visited candidates' embeddings are read a second time (``source.take``).
    Fully deterministic; ``seed`` is not used.
    """

    name = "hybrid"
    defaults: ClassVar[Mapping[str, Any]] = {
        "coverage": True,
        "coverage_per_class": 15,
        "uncertainty_weight": "auto",
        "weights": {"entropy": 0.25, "margin": 0.25, "fre": 0.5},
        "similarity_threshold": 0.95,
        "candidate_factor": 10,
        "stratify": True,
        **_NOVELTY_DEFAULTS,
    }

    @staticmethod
    def _check_weights(weights: object) -> dict[str, float]:
        expected = "a dict mapping some of " + ", ".join(_COMPONENTS) + " to weights >= 0, not all 0"
        if not isinstance(weights, Mapping) or not weights:
            raise param_error("weights", expected, weights)
        out: dict[str, float] = {}
        for key, w in weights.items():
            if key not in _COMPONENTS or isinstance(w, bool) or not isinstance(w, numbers.Real):
                raise param_error("weights", expected, dict(weights))
            if not np.isfinite(float(w)) or float(w) < 0:
                raise param_error("weights", expected, dict(weights))
            if float(w) > 0:
                out[key] = float(w)
        if not out:
            raise param_error("weights", expected, dict(weights))
        return out

    def _check_params(self) -> dict[str, Any]:
        params = _check_novelty_params(super()._check_params())
        params["weights"] = self._check_weights(params["weights"])
        params["similarity_threshold"] = check_float("similarity_threshold", params["similarity_threshold"], low=-1.0, high=1.0)
        params["candidate_factor"] = check_int("candidate_factor", params["candidate_factor"], low=1)
        for flag in ("stratify", "coverage"):
            if not isinstance(params[flag], bool):
                raise param_error(flag, "a bool", params[flag])
        if params["uncertainty_weight"] != "auto":
            params["uncertainty_weight"] = check_float("uncertainty_weight", params["uncertainty_weight"], low=0.0, high=1.0)
        if params["coverage_per_class"] is not None:
            params["coverage_per_class"] = check_float("coverage_per_class", params["coverage_per_class"], low=0.0, high=1e6)
        return params

    @staticmethod
    def coverage_share(labeled: int, num_classes: int, per_class: float | None) -> float:
        """The fraction of a batch that coverage picks with ``labeled`` labels (1.0 when ``per_class`` is None)."""
        if per_class is None:
            return 1.0
        if per_class <= 0:
            return 0.0
        return float(np.clip(1.0 - labeled / (per_class * max(1, num_classes)), 0.0, 1.0))

    def _select_budgeted(self, pool: Pool, n: int, params: dict[str, Any], *, seed: int, chunk_size: int) -> Selection:
        """Coverage's share of the batch (``coverage_share``) first, then the most uncertain by margin."""
        uncertainty = margin(pool.probs)
        n_cov = round(n * self.coverage_share(len(pool.labels), pool.num_classes, params["coverage_per_class"]))
        first = self._select_coverage(pool, n_cov, params, uncertainty, seed=seed, chunk_size=chunk_size) if n_cov else None
        if first is not None and n_cov == n:
            return first
        taken = np.empty(0, np.int64) if first is None else first.indices
        rest = top_n(uncertainty, np.setdiff1d(pool.candidates, taken), n - taken.size)
        idx = np.concatenate([taken, rest]).astype(np.int64)
        score = np.concatenate([first.score if first is not None else np.empty(0, np.float32), uncertainty[rest].astype(np.float32)])
        components = {"margin": uncertainty[idx].astype(np.float32)}
        for name, v in first.components.items() if first is not None else ():  # coverage's figures; NaN for margin's picks
            if name != "margin":
                components[name] = np.concatenate([v.astype(np.float32), np.full(rest.size, np.nan, np.float32)])
        return Selection(idx, score.astype(np.float32), components, self.name)

    def _select_coverage(
        self, pool: Pool, n: int, params: dict[str, Any], uncertainty: np.ndarray, *, seed: int, chunk_size: int
    ) -> Selection:
        from .coldstart import typical_diverse  # here: coldstart imports Selection from this module

        weight = params["uncertainty_weight"]
        if weight == "auto":
            # over every pool row, excluded or not: the weight must not move with other annotators' leases
            weight = float(np.sqrt(np.clip(np.mean(pool.probs.max(axis=1)), 0.0, 1.0)))
        exclude = np.ones(pool.probs.shape[0], dtype=bool)
        exclude[pool.candidates] = False
        knn = pool.novelty.get("knn")  # cosine distance of unit rows: Euclidean is sqrt(2 * knn)
        sel = typical_diverse(
            pool.source, n, labeled=pool.labeled, exclude=exclude, seed=seed, chunk_size=chunk_size,
            priority=uncertainty, priority_weight=weight,
            labeled_distance=None if knn is None else np.sqrt(2.0 * np.maximum(knn, 0.0)), clusters=pool.clusters,
            typicality=pool.typicality,
        )  # fmt: skip
        components = {
            **sel.components,
            "margin": uncertainty[sel.indices].astype(np.float32),
            "uncertainty_weight": np.full(sel.indices.size, weight, dtype=np.float32),
        }
        return Selection(sel.indices, sel.score, components, self.name)

    def _select(self, pool: Pool, n: int, params: dict[str, Any], *, seed: int, chunk_size: int) -> Selection:
        if params["coverage"]:
            return self._select_budgeted(pool, n, params, seed=seed, chunk_size=chunk_size)
        weights: dict[str, float] = params["weights"]
        threshold: float = params["similarity_threshold"]
        factor: int = params["candidate_factor"]
        stratify: bool = params["stratify"]

        raw: dict[str, np.ndarray] = {}
        for key, fn in (
            ("least_confidence", least_confidence),
            ("margin", margin),
            ("entropy", entropy),
        ):
            if key in weights:
                raw[key] = fn(pool.probs)
        raw.update(pool.novelty_scores(params, tuple(k for k in ("fre", "knn") if k in weights), chunk_size))
        cand = pool.candidates
        total = sum(weights.values())
        score = np.zeros(cand.size, dtype=np.float32)
        for key, w in weights.items():
            score += np.float32(w / total) * rank_normalize(raw[key][cand])

        if stratify:
            predicted = pool.probs[cand].argmax(axis=1)
            labeled_counts = np.bincount(pool.labels, minlength=pool.num_classes)
            class_order = np.lexsort((np.arange(pool.num_classes), labeled_counts))
        else:
            predicted = np.zeros(cand.size, dtype=np.int64)
            class_order = np.zeros(1, dtype=np.int64)
        pos = stratified_diverse(
            cand,
            score,
            predicted,
            class_order,
            n,
            pool.source,
            similarity_threshold=threshold,
            candidate_factor=factor,
        )
        idx = cand[pos]
        components = {key: raw[key][idx].astype(np.float32) for key in weights}
        return Selection(idx, score[pos].astype(np.float32), components, self.name)


class TypiClust(QueryStrategy):
    """Cold start: typical rows of the largest clusters no labeled embedding falls in
    (``coldstart.typical_diverse``; params: max_fit, k_neighbors, iterations, max_clusters).

    Needs only the pool and labeled embeddings: ``probs``, ``labeled_labels`` and ``num_classes``
    are not read, so ``select("typiclust", n, None, embeddings, labeled_embeddings, np.empty(0, int))`` works
    before any model exists. Seeded by ``seed``.
    """

    name = "typiclust"
    defaults: ClassVar[Mapping[str, Any]] = {"max_fit": 20000, "k_neighbors": 20, "iterations": 30, "max_clusters": 500}

    def select(
        self,
        n: int,
        probs: np.ndarray | None,
        embeddings: EmbeddingSource | np.ndarray,
        labeled_embeddings: np.ndarray,
        labeled_labels: np.ndarray,
        *,
        num_classes: int | None = None,
        seed: int = 0,
        chunk_size: int = 65536,
        exclude: np.ndarray | None = None,
        novelty: Mapping[str, np.ndarray] | None = None,
        clusters: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None,
        typicality: TypicalityMemo | None = None,
    ) -> Selection:
        from .coldstart import typical_diverse  # here, not at the top: coldstart imports Selection from this module

        params = self._check_params()
        return typical_diverse(
            embeddings, n, labeled=labeled_embeddings, exclude=exclude, seed=seed, chunk_size=chunk_size, clusters=clusters,
            typicality=typicality, **params,
        )  # fmt: skip


_REGISTRY: dict[str, type[QueryStrategy]] = {
    cls.name: cls
    for cls in (
        RandomSampling,
        LeastConfidence,
        Margin,
        Entropy,
        FeatureReconstructionError,
        KNNDistance,
        Hybrid,
        TypiClust,
    )
}
assert tuple(_REGISTRY) == STRATEGIES


def get_strategy(strategy: str, **params: Any) -> QueryStrategy:
    """The strategy object for a name in ``STRATEGIES``, with its parameters stored."""
    name = check_choice("strategy", strategy, STRATEGIES)
    return _REGISTRY[name](**params)


def select(
    strategy: str,
    n: int,
    probs: np.ndarray | None,
    embeddings: EmbeddingSource | np.ndarray,
    labeled_embeddings: np.ndarray,
    labeled_labels: np.ndarray,
    *,
    num_classes: int | None = None,
    seed: int = 0,
    chunk_size: int = 65536,
    exclude: np.ndarray | None = None,
    novelty: Mapping[str, np.ndarray] | None = None,
    clusters: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None,
    typicality: TypicalityMemo | None = None,
    **params: Any,
) -> Selection:
    """Choose the next ``n`` pool rows to annotate.

    Args:
        strategy: one of ``STRATEGIES``.
        n: batch size, >= 1; more than the candidates returns all candidates.
        probs: float32 ``[N, C]`` class probabilities of the unlabeled pool; ``typiclust``
            ignores it (and ``labeled_labels``, ``num_classes``): pass None before a model exists.
        embeddings: ``[N, D]`` embeddings of the same rows, an ``EmbeddingSource`` or ndarray.
        labeled_embeddings: float ``[M, D]`` embeddings of the annotated set (M may be 0).
        labeled_labels: int ``[M]`` class index of each annotated row.
        num_classes: optional check that ``probs`` has this many columns.
        seed: random seed (used by ``random`` and ``typiclust``; the others are deterministic).
        chunk_size: pool rows per block when reading embeddings; memory is about
            ``chunk_size * max(D, labeled_chunk_size) * 4`` bytes for scoring.
        exclude: optional bool ``[N]``; True rows are never selected.
        novelty: optional precomputed novelty of these pool rows, ``"knn"``/``"fre"`` -> float
            ``[N]`` (e.g. ``NoveltyCache.knn``'s cached distances); used instead of computing them.
        clusters: optional ``k -> (centres [k, D], assignment int64 [N])``, a k-means of these pool
            rows fitted elsewhere (``NoveltyCache.clusters``); ``hybrid`` and ``typiclust`` use it
            for pools larger than their ``max_fit`` (20,000) instead of clustering per call.
        typicality: optional ``TypicalityMemo`` over these pool rows (``NoveltyCache.typicality``):
            ``hybrid`` and ``typiclust`` take per-cluster typicality from it instead of re-reading
            the cluster; the picks are the same.
        **params: strategy parameters (see each strategy class).

    Returns:
        A ``Selection`` ranked best first.

    Raises:
        ValueError: unknown strategy or parameter, or inputs of the wrong shape/dtype/range.
    """
    return get_strategy(strategy, **params).select(
        n,
        probs,
        embeddings,
        labeled_embeddings,
        labeled_labels,
        num_classes=num_classes,
        seed=seed,
        chunk_size=chunk_size,
        exclude=exclude,
        novelty=novelty,
        clusters=clusters,
        typicality=typicality,
    )


def novelty_scores(
    probs: np.ndarray,
    embeddings: EmbeddingSource | np.ndarray,
    labeled_embeddings: np.ndarray,
    labeled_labels: np.ndarray,
    *,
    chunk_size: int = 65536,
    knn_max_pairs: int = 1_000_000_000,
    knn_index: NearestLabeled | None = None,
    knn: np.ndarray | None = None,
    **params: Any,
) -> dict[str, np.ndarray]:
    """Per-sample novelty for every pool row, for persisting beside predictions.

    Returns ``{"fre": float32 [N], "knn": float32 [N]}``, in one pass over ``embeddings``.
    ``"knn"`` is omitted only when it would be searched exactly (``M <= exact_max_labeled`` and
    no ``knn_index``) and ``N * M > knn_max_pairs`` (exact k-NN costs ``2 * N * M * D`` flops; the
    default 1e9 pairs is ~2.6 TFLOP at D=1280); above ``exact_max_labeled`` it is approximate and
    always included, as with ``M == 0`` (distance to the pool mean). ``knn_index``: a prebuilt
    ``NearestLabeled`` over ``labeled_embeddings``; ``knn``: precomputed distances float ``[N]``
    (e.g. ``NoveltyCache.knn``), returned as they are. ``params``: variance, max_components,
    min_class_samples, labeled_chunk_size, exact_max_labeled (see ``novelty``).
    """
    chunk_size = check_int("chunk_size", chunk_size)
    knn_max_pairs = check_int("knn_max_pairs", knn_max_pairs, low=0)
    unknown = sorted(set(params) - set(_NOVELTY_DEFAULTS))
    if unknown:
        raise ValueError(
            f"The {unknown[0]!r} parameter is not valid for novelty_scores. Valid parameters: {', '.join(sorted(_NOVELTY_DEFAULTS))}."
        )
    full = _check_novelty_params({**_NOVELTY_DEFAULTS, **params})
    pool = _check_pool(probs, embeddings, labeled_embeddings, labeled_labels, None, None, None if knn is None else {"knn": knn})
    n_rows, m = pool.probs.shape[0], pool.labeled.shape[0]
    out = compute_novelty(
        pool.probs,
        pool.source,
        pool.labeled,
        pool.labels,
        fre=True,
        knn=knn is None and (m == 0 or knn_index is not None or m > full["exact_max_labeled"] or n_rows * m <= knn_max_pairs),
        chunk_size=chunk_size,
        knn_index=knn_index,
        **_novelty_kwargs(full),
    )
    out.update(pool.novelty)
    return out
