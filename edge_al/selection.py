"""What to annotate next: the active version's predictions and embeddings fed to a strategy."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import acquisition
from .acquisition.cache import NoveltyCache
from .acquisition.memo import TypicalityMemo
from .config import Settings
from .errors import NoActiveModel
from .features import Backbone, FeatureCache, find_backbone
from .registry import Registry
from .results import label_name
from .scoring import IdEmbeddings, embedding_file, labeled_reference, novelty_cache, prediction_cache
from .storage import images_storage
from .store import Store

__all__ = ["UNCERTAIN_MARGIN", "Candidate", "cold_start", "pick_reason", "select_next"]

# top-1 minus top-2 probability below this: the pick is called "uncertain" (the INT8 gate calls >= 0.2 "decided")
UNCERTAIN_MARGIN = 0.2

_RESIDENT_POOL = 20000  # typiclust's default max_fit: larger pools are read in chunks
_MAX_CLUSTERS = 500  # typiclust's default max_clusters


@dataclass(frozen=True)
class Candidate:
    rank: int
    sample_id: int
    path: str
    predicted: str
    confidence: float
    score: float
    components: dict[str, float] = field(default_factory=dict)
    probs: dict[str, float] = field(default_factory=dict)
    reason: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "sample_id": self.sample_id,
            "path": self.path,
            "predicted": self.predicted,
            "confidence": round(self.confidence, 6),
            "score": round(self.score, 6),
            "components": {k: round(v, 6) for k, v in self.components.items()},
            "reason": self.reason,
        }


def select_next(
    settings: Settings,
    store: Store,
    registry: Registry,
    n: int,
    strategy: str = acquisition.DEFAULT_STRATEGY,
    *,
    seed: int = 0,
    exclude_ids: Iterable[int] = (),
    version: str | None = None,
) -> list[Candidate]:
    """Rank the unlabeled, scored pool with ``strategy``; returns up to ``n`` candidates.

    With no model yet, a pool embedded by ``edge-al embed`` (the pretrained backbone) gets a cold
    start instead: typical and diverse samples (TypiClust), whatever ``strategy`` says.
    """
    mv = registry.get(version) if version else registry.active()
    if mv is None:
        backbone = find_backbone(settings)
        if backbone is None:
            raise NoActiveModel(
                "No model version is active and the pool is not embedded yet: run `edge-al embed` (pretrained features, "
                "no labels needed) for a cold-start selection, or train and export a model."
            )
        return cold_start(settings, store, backbone, n, seed=seed, exclude_ids=exclude_ids)
    ids, probs = prediction_cache(settings, mv).load(store, mv.version)
    scored = ids
    annotated = store.annotated_ids()
    pool_mask = ~np.isin(ids, annotated)
    ids, probs = ids[pool_mask], probs[pool_mask]
    if len(ids) == 0:
        return []
    excluded = set(int(i) for i in exclude_ids)
    exclude = np.isin(ids, np.array(sorted(excluded), dtype=np.int64)) if excluded else None
    emb_file = embedding_file(settings, mv)
    try:
        lab_ids, lab_emb, lab_cls = labeled_reference(store, mv, emb_file, scored)
        source = IdEmbeddings(emb_file, ids)
        novelty, clusters, typicality = _cached_inputs(novelty_cache(settings, mv), strategy, ids, source, lab_ids, lab_emb, seed)
        sel = acquisition.select(
            strategy,
            n,
            probs,
            source,
            lab_emb,
            lab_cls,
            num_classes=len(mv.labels),
            seed=seed,
            exclude=exclude,
            novelty=novelty,
            clusters=clusters,
            typicality=typicality,
        )
    finally:
        emb_file.close()
    chosen = ids[sel.indices]
    samples = {s.id: s for s in store.samples(chosen.tolist())}
    where = images_storage(settings).location  # a sample's ref -> its path or URL, for people
    labels = mv.labels
    labeled_counts = Counter(a.label for a in store.current_annotations().values() if a.label is not None)
    out = []
    for rank, (pos, sid) in enumerate(zip(sel.indices.tolist(), chosen.tolist(), strict=True)):
        p = probs[pos]
        k = int(np.argmax(p))
        out.append(
            Candidate(
                rank=rank + 1,
                sample_id=int(sid),
                path=where(samples[int(sid)].path),
                predicted=label_name(labels, k),
                confidence=float(p[k]),
                score=float(sel.score[rank]),
                components=_pick_components(sel, rank),
                probs={label_name(labels, i): float(p[i]) for i in range(len(p))},
            )
        )
    return [replace(c, reason=pick_reason(c, labeled_counts, labels, strategy)) for c in out]


def _cached_inputs(
    cache: NoveltyCache, strategy: str, ids: np.ndarray, source: IdEmbeddings, lab_ids: np.ndarray, lab_emb: np.ndarray, seed: int
) -> tuple[dict[str, np.ndarray] | None, Callable[[int], tuple[np.ndarray, np.ndarray]] | None, TypicalityMemo | None]:
    """What ``strategy`` takes from the version's novelty cache for the pool rows ``ids``:
    (``novelty`` for ``acquisition.select``, its ``clusters`` provider, its ``typicality`` memo).

    The cached k-NN distances (kept up to date by scoring, extended for new labels): knn ranks by
    them; hybrid's farthest-first fill-up of a large pool starts from them, which it needs once the
    labels outnumber its clusters (they then mostly cover them). Hybrid and typiclust cluster a
    large pool once per model version, not per call, and keep each cluster's typicality estimate
    (it depends on the embeddings only), so a call after a new label reads no cluster again.
    """
    fill_up = strategy == "hybrid" and len(ids) > _RESIDENT_POOL and len(lab_ids) >= _MAX_CLUSTERS
    novelty = {"knn": cache.knn(ids, source, lab_ids, lab_emb)} if len(lab_ids) and (strategy == "knn" or fill_up) else None
    if len(ids) <= _RESIDENT_POOL:
        return novelty, None, None
    typicality = cache.typicality(ids) if strategy in ("hybrid", "typiclust") else None
    return novelty, lambda k: cache.clusters(ids, source, k, seed=seed), typicality


def cold_start(
    settings: Settings, store: Store, backbone: Backbone, n: int, *, seed: int = 0, exclude_ids: Iterable[int] = ()
) -> list[Candidate]:
    """Up to ``n`` unannotated samples that are typical of the pool's modes and unlike each other and
    the annotated ones, on the backbone's frozen features (missing features are computed first)."""
    ids = np.array(store.sample_ids(), dtype=np.int64)
    annotated = store.annotated_ids()
    excluded = set(int(i) for i in exclude_ids)
    with FeatureCache(settings, backbone) as cache:
        feats, ids = cache.get(store, ids)
        labeled_ids = ids[np.isin(ids, annotated)]
        lab_feats, _ = cache.get(store, labeled_ids)
    pool = ~np.isin(ids, annotated)
    feats, ids = feats[pool], ids[pool]
    if len(ids) == 0:
        return []
    exclude = np.isin(ids, np.array(sorted(excluded), dtype=np.int64)) if excluded else None
    sel = acquisition.typical_diverse(
        feats,
        min(n, len(ids)),
        labeled=lab_feats if len(lab_feats) else None,
        exclude=exclude,
        seed=seed,
        farthest_share=acquisition.COLD_START_FARTHEST_SHARE,
    )
    chosen = ids[sel.indices]
    samples = {s.id: s for s in store.samples(chosen.tolist())}
    where = images_storage(settings).location  # a sample's ref -> its path or URL, for people
    return [
        Candidate(
            rank=rank + 1,
            sample_id=int(sid),
            path=where(samples[int(sid)].path),
            predicted="",
            confidence=0.0,
            score=float(sel.score[rank]),
            components=_pick_components(sel, rank),
            reason=_cold_start_reason(sel, rank),
        )
        for rank, sid in enumerate(chosen.tolist())
    ]


def _cold_start_reason(sel: acquisition.Selection, rank: int) -> dict[str, Any]:
    """A cold-start pick is typical of an uncovered cluster (typicality > 0) or farthest-first."""
    if float(sel.components["typicality"][rank]) > 0:
        code = "cold-start typical"
        text = f"typical of a group of {int(sel.components['cluster_size'][rank])} pool images that no label covers yet (no model yet)"
    else:
        code = "cold-start farthest"
        text = "unlike every image labeled or picked before it: the pool's edges, where rare classes hide (no model yet)"
    return {"code": code, "codes": [code], "text": text}


def _pick_components(sel: acquisition.Selection, rank: int) -> dict[str, float]:
    """The component figures of the ``rank``-th pick; a NaN marks a component that is not a figure of
    this pick (a mixed batch: coverage's typicality on a margin pick) and is left out."""
    return {name: float(v[rank]) for name, v in sel.components.items() if np.isfinite(v[rank])}


def pick_reason(c: Candidate, labeled_counts: Mapping[str, int], labels: Sequence[str], strategy: str) -> dict[str, Any]:
    """Why ``c`` was picked, for people: ``{"code", "codes", "text"}``. Codes, most telling first:
    ``uncertain`` (top-2 margin below ``UNCERTAIN_MARGIN``), ``rare predicted class`` (its guessed class
    has fewer than half the mean labels per class), ``unlike anything labeled`` (a cluster no label covers,
    or the novelty strategies), else ``random`` or ``ranked by <strategy>``."""
    codes: list[str] = []
    texts: list[str] = []
    top = sorted(c.probs.items(), key=lambda kv: -kv[1])[:2]
    if len(top) == 2 and top[0][1] - top[1][1] < UNCERTAIN_MARGIN:
        codes.append("uncertain")
        texts.append(f"uncertain: {top[0][0]} {top[0][1]:.2f} vs {top[1][0]} {top[1][1]:.2f}")
    mean_labeled = sum(labeled_counts.get(x, 0) for x in labels) / max(1, len(labels))
    have = labeled_counts.get(c.predicted, 0)
    if c.predicted and have < max(1.0, 0.5 * mean_labeled):
        codes.append("rare predicted class")
        texts.append(f"rare predicted class: {have} labeled {c.predicted} (mean {mean_labeled:.1f} per class)")
    if "cluster_size" in c.components:
        codes.append("unlike anything labeled")
        texts.append(f"unlike anything labeled: from a group of {int(c.components['cluster_size'])} similar pool images with no label yet")
    elif strategy in ("fre", "knn") or ("fre" in c.components and not codes):
        codes.append("unlike anything labeled")
        texts.append("unlike anything labeled: far from the labeled images of its guessed class (feature novelty)")
    if not codes:
        codes.append("random" if strategy == "random" else f"ranked by {strategy}")
        texts.append("a random draw (the baseline)" if strategy == "random" else f"ranked by {strategy}")
    return {"code": codes[0], "codes": codes, "text": "; ".join(texts)}
