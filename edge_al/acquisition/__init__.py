"""Acquisition: which unlabeled samples to annotate next. Pure numpy.

- ``uncertainty``: least-confidence, margin, entropy from class probabilities.
- ``novelty``: FRE (class-aware PCA reconstruction error) and k-NN distance to the labeled set,
  computed in pool chunks with bounded memory.
- ``batch``: deterministic top-n, rank normalisation, class-stratified diverse greedy.
- ``strategies``: one small class per strategy and ``select()`` dispatching by name.
- ``embeddings``: ``EmbeddingSource`` and its array/file adapters.
- ``coldstart``: TypiClust, typical rows of uncovered clusters for the first labels (no model).

Errors are ``ValueError`` with scikit-learn style messages
(``The 'n' parameter must be an int >= 1. Got 0 instead.``).
"""

from .batch import rank_normalize, top_n
from .coldstart import COLD_START_FARTHEST_SHARE, typical_diverse
from .embeddings import ArrayEmbeddings, EmbeddingSource, FileEmbeddings, half_to_float32
from .novelty import fit_fre, fit_pca, knn_distance, l2_normalize
from .strategies import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    Entropy,
    FeatureReconstructionError,
    Hybrid,
    KNNDistance,
    LeastConfidence,
    Margin,
    QueryStrategy,
    RandomSampling,
    Selection,
    TypiClust,
    get_strategy,
    novelty_scores,
    select,
)
from .uncertainty import entropy, least_confidence, margin, uncertainty_scores

__all__ = [
    "COLD_START_FARTHEST_SHARE",
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "ArrayEmbeddings",
    "EmbeddingSource",
    "Entropy",
    "FeatureReconstructionError",
    "FileEmbeddings",
    "Hybrid",
    "KNNDistance",
    "LeastConfidence",
    "Margin",
    "QueryStrategy",
    "RandomSampling",
    "Selection",
    "TypiClust",
    "entropy",
    "fit_fre",
    "fit_pca",
    "get_strategy",
    "half_to_float32",
    "knn_distance",
    "l2_normalize",
    "least_confidence",
    "margin",
    "novelty_scores",
    "rank_normalize",
    "select",
    "top_n",
    "typical_diverse",
    "uncertainty_scores",
]
