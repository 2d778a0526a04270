"""Novelty of pool samples relative to the labeled set: FRE and k-NN distance, chunked.

Both scores work on L2-normalised embeddings, so they measure direction, not magnitude.

**FRE** (feature reconstruction error; Krishnan et al., arXiv:2109.06873, as in Intel Geti):
for each class with at least ``min_class_samples`` labeled samples, a PCA is fitted on that
class's normalised labeled embeddings, keeping the fewest components that explain ``variance``
of its variance, capped at ``max_components`` and at ``m - 1``. A pool sample's FRE is its
squared reconstruction error ``||x - mu - V V^T (x - mu)||^2`` under the PCA of its *predicted*
class (argmax of ``probs``). Fallbacks, in order:

- predicted class with too few (or no) labels: the global PCA over all labeled embeddings;
- fewer than 3 labeled samples in all (``1 <= M < 3``): no components, so FRE is the squared
  distance to the labeled mean;
- no labeled samples (``M == 0``): squared distance to the mean of the normalised *pool*
  (one extra pass over the pool).

The error is computed by projecting onto the ``k`` components (cost ``N * D * k``), never by
reconstructing ``x``.

**k-NN**: cosine distance ``1 - max_j cos(x, l_j)`` to the nearest labeled embedding, through a
``NearestLabeled`` index (``index``): exact, in blocks of ``chunk_size`` pool rows x
``labeled_chunk_size`` labeled rows (never ``N x M`` at once), while ``M <= exact_max_labeled``
(2,048); inverted lists searched by GEMM above (exact k-NN costs ``2 * N * M * D`` flops,
1e6 x 1e4 x 1280 is ~26 TFLOP, minutes on two cores). With ``M == 0`` it is the cosine distance
to the normalised pool mean. A prebuilt index (the workspace cache's) can be passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .embeddings import EmbeddingSource
from .index import EXACT_MAX_LABELED, NearestLabeled, exact_nearest
from .parallel import for_each_block

__all__ = [
    "FREModel",
    "PCAModel",
    "compute_novelty",
    "fit_fre",
    "fit_pca",
    "inverse_norms",
    "knn_distance",
    "l2_normalize",
    "pool_mean",
]

_EPS = np.float32(1e-12)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Scale the rows of float32 ``x`` ``[n, D]`` to unit L2 norm, in place; zero rows stay zero."""
    x *= inverse_norms(x)[:, None]
    return x


def inverse_norms(x: np.ndarray) -> np.ndarray:
    """``1 / ||x_i||`` for the rows of float32 ``x`` ``[n, D]``, float32 ``[n]`` (0 for zero rows).

    Scoring multiplies the small products ``x @ W`` by this instead of normalising ``x`` itself,
    which saves a full read and write of every pool chunk.
    """
    sq: np.ndarray = np.einsum("ij,ij->i", x, x)
    inv = np.zeros_like(sq)
    np.divide(1.0, np.sqrt(sq), out=inv, where=sq > _EPS * _EPS)
    return inv


@dataclass(frozen=True)
class PCAModel:
    """A centred linear subspace: ``mean_`` float32 ``[D]``, ``components_`` float32 ``[D, k]``
    with orthonormal columns (``k`` may be 0: then the model is just the mean)."""

    mean_: np.ndarray
    components_: np.ndarray

    @property
    def n_components(self) -> int:
        return int(self.components_.shape[1])

    def reconstruction_error(self, x: np.ndarray, inv_norm: np.ndarray | None = None) -> np.ndarray:
        """Squared reconstruction error of rows ``x`` float32 ``[n, D]``, float32 ``[n]``.

        With ``inv_norm`` float32 ``[n]`` (see ``inverse_norms``) the error is that of the
        L2-normalised rows ``x * inv_norm[:, None]``, without forming them. Uses
        ``||x - mu||^2 - ||V^T (x - mu)||^2`` with one ``[n, D] @ [D, k + 1]`` product; ``x`` is
        not modified.
        """
        mu = self.mean_
        basis = np.concatenate([self.components_, mu[:, None]], axis=1)  # [D, k + 1]
        prod = x @ basis  # [n, k + 1]
        if inv_norm is None:
            sq = np.einsum("ij,ij->i", x, x)
        else:
            prod *= inv_norm[:, None]
            sq = (inv_norm > 0).astype(np.float32)  # unit rows, or zero rows
        xmu = prod[:, -1]
        proj = prod[:, :-1] - (mu @ self.components_)[None, :]
        err = sq - 2.0 * xmu + float(mu @ mu)
        err -= np.einsum("ij,ij->i", proj, proj)
        out: np.ndarray = np.maximum(err, 0.0).astype(np.float32, copy=False)
        return out


def _choose_k(lam: np.ndarray, total: float, variance: float, max_components: int, m: int) -> int:
    """Fewest leading eigenvalues (``lam``, descending) reaching ``variance`` of ``total``, capped."""
    if total <= 0.0 or lam.size == 0:
        return 0
    k = int(np.searchsorted(np.cumsum(lam) / total, variance - 1e-9) + 1)
    usable = int(np.count_nonzero(lam > 1e-10 * total))
    return max(0, min(k, max_components, m - 1, usable))


def _top_eigh(sym: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Leading ``k`` eigenpairs of the symmetric PSD float64 ``sym`` ``[p, p]``, descending.

    Full ``eigh`` for small matrices; otherwise seeded subspace iteration (``k + 16`` vectors,
    6 rounds), which costs ``O(p^2 k)`` instead of ``O(p^3)`` and is deterministic.
    """
    p = sym.shape[0]
    if p <= max(256, 4 * (k + 16)):
        lam, vec = np.linalg.eigh(sym)
        return np.clip(lam[::-1][:k], 0.0, None), vec[:, ::-1][:, :k]
    q = np.random.default_rng(0).standard_normal((p, k + 16))
    for _ in range(6):
        q, _r = np.linalg.qr(sym @ q)
    lam, w = np.linalg.eigh(q.T @ sym @ q)
    return np.clip(lam[::-1][:k], 0.0, None), (q @ w[:, ::-1])[:, :k]


def fit_pca(x: np.ndarray, *, variance: float = 0.95, max_components: int = 32) -> PCAModel:
    """Fit a PCA on float32 ``x`` ``[m, D]`` (m >= 1), keeping the fewest components that explain
    ``variance`` of the variance, at most ``max_components`` and ``m - 1`` (when the cap binds,
    less variance is kept).

    Works on the ``[m, m]`` Gram matrix when ``m <= D`` and on the ``[D, D]`` covariance
    (accumulated in row blocks) otherwise, in float64; only the leading ``max_components``
    eigenpairs are computed, the total variance is the trace.
    """
    m, d = x.shape
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    if m < 2 or max_components == 0:
        return PCAModel(mean, np.zeros((d, 0), dtype=np.float32))
    kmax = min(max_components, m - 1, d)
    if m <= d:
        xc = x - mean
        gram = (xc @ xc.T).astype(np.float64)
        lam, u = _top_eigh(gram, kmax)
        k = _choose_k(lam, float(np.trace(gram)), variance, max_components, m)
        comps = (xc.T @ u[:, :k].astype(np.float32)) / np.sqrt(lam[:k]).astype(np.float32)
    else:
        cov = np.zeros((d, d), dtype=np.float64)
        for s in range(0, m, 8192):
            xb = x[s : s + 8192] - mean
            cov += xb.T @ xb
        lam, v = _top_eigh(cov, kmax)
        k = _choose_k(lam, float(np.trace(cov)), variance, max_components, m)
        comps = v[:, :k]
    if k:  # re-orthonormalise in float64 against float32 round-off
        q, _ = np.linalg.qr(np.asarray(comps, dtype=np.float64))
        comps = q
    return PCAModel(mean, np.ascontiguousarray(comps, dtype=np.float32).reshape(d, k))


@dataclass(frozen=True)
class FREModel:
    """Class-aware PCA set: ``models_[class_to_model_[c]]`` scores samples predicted as class c."""

    models_: tuple[PCAModel, ...]
    class_to_model_: np.ndarray  # int64 [C]

    def score(self, x: np.ndarray, predicted: np.ndarray, inv_norm: np.ndarray | None = None) -> np.ndarray:
        """FRE of rows ``x`` float32 ``[n, D]`` given predicted classes int ``[n]``; the rows are
        taken as normalised, or normalised on the fly with ``inv_norm`` float32 ``[n]``."""
        out = np.empty(x.shape[0], dtype=np.float32)
        model_of_row = self.class_to_model_[predicted]
        for mi, model in enumerate(self.models_):
            rows = np.flatnonzero(model_of_row == mi)
            if rows.size == 0:
                continue
            if rows.size == x.shape[0]:
                out[:] = model.reconstruction_error(x, inv_norm)
            else:
                out[rows] = model.reconstruction_error(x[rows], None if inv_norm is None else inv_norm[rows])
        return out


def fit_fre(
    labeled: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    pool_mean: np.ndarray | None = None,
    variance: float = 0.95,
    max_components: int = 32,
    min_class_samples: int = 3,
) -> FREModel:
    """Fit the class-aware PCAs on normalised labeled embeddings float32 ``[M, D]`` with int
    ``labels`` ``[M]`` in ``[0, num_classes)``. ``pool_mean`` float32 ``[D]`` is required when
    ``M == 0`` (see the module docstring for the fallbacks)."""
    m, d = labeled.shape
    if m == 0:
        if pool_mean is None:
            raise ValueError("fit_fre needs 'pool_mean' when there are no labeled embeddings.")
        glob = PCAModel(pool_mean.astype(np.float32), np.zeros((d, 0), dtype=np.float32))
    elif m < 3:
        glob = fit_pca(labeled, max_components=0)
    else:
        glob = fit_pca(labeled, variance=variance, max_components=max_components)
    models = [glob]
    class_to_model = np.zeros(num_classes, dtype=np.int64)
    counts = np.bincount(labels, minlength=num_classes) if m else np.zeros(num_classes, np.int64)
    for c in range(num_classes):
        if counts[c] >= max(3, min_class_samples):
            class_to_model[c] = len(models)
            models.append(
                fit_pca(
                    labeled[labels == c],
                    variance=variance,
                    max_components=max_components,
                )
            )
    return FREModel(tuple(models), class_to_model)


def knn_distance(
    x: np.ndarray,
    labeled: np.ndarray,
    *,
    labeled_chunk_size: int = 1024,
    inv_norm: np.ndarray | None = None,
) -> np.ndarray:
    """Cosine distance from each normalised row of ``x`` float32 ``[n, D]`` to its nearest
    normalised row of ``labeled`` float32 ``[M, D]`` (M >= 1), float32 ``[n]`` in ``[0, 2]``.
    Rows of ``x`` are normalised on the fly by ``inv_norm`` float32 ``[n]`` when given.
    Works in ``[n, labeled_chunk_size]`` similarity blocks."""
    best, _ = exact_nearest(x, labeled, labeled_chunk_size=labeled_chunk_size, inv_norm=inv_norm)
    out: np.ndarray = np.clip(1.0 - best, 0.0, 2.0).astype(np.float32, copy=False)
    return out


def pool_mean(source: EmbeddingSource, *, chunk_size: int = 65536) -> np.ndarray:
    """Mean of the L2-normalised pool rows, float32 ``[D]`` (zeros for an empty pool)."""
    total = np.zeros(source.dim, dtype=np.float64)
    n = len(source)
    for s in range(0, n, chunk_size):
        x = source.chunk(s, min(n, s + chunk_size))
        total += (inverse_norms(x) @ x).astype(np.float64)
    return (total / max(n, 1)).astype(np.float32)


def compute_novelty(
    probs: np.ndarray,
    source: EmbeddingSource,
    labeled: np.ndarray,
    labels: np.ndarray,
    *,
    fre: bool = True,
    knn: bool = True,
    chunk_size: int = 65536,
    labeled_chunk_size: int = 1024,
    variance: float = 0.95,
    max_components: int = 32,
    min_class_samples: int = 3,
    exact_max_labeled: int = EXACT_MAX_LABELED,
    knn_index: NearestLabeled | None = None,
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """FRE and/or k-NN scores for every pool row in one pass over ``source``.

    ``probs`` float32 ``[N, C]``; ``labeled`` float32 ``[M, D]`` *already L2-normalised*;
    ``labels`` int64 ``[M]``. Inputs are assumed validated. ``knn_index``: a ``NearestLabeled``
    over exactly ``labeled`` (built here when None, exact when ``M <= exact_max_labeled``).
    Returns float32 ``[N]`` arrays under ``"fre"`` and ``"knn"`` as requested. The pass runs its
    row blocks on ``parallel.thread_count(threads)`` threads (same result whatever the count).
    """
    n, num_classes = probs.shape
    m = labeled.shape[0]
    out: dict[str, np.ndarray] = {}
    if not (fre or knn):
        return out
    mean = pool_mean(source, chunk_size=chunk_size) if m == 0 else None
    fre_model = None
    if fre:
        fre_model = fit_fre(
            labeled,
            labels,
            num_classes,
            pool_mean=mean,
            variance=variance,
            max_components=max_components,
            min_class_samples=min_class_samples,
        )
        out["fre"] = np.empty(n, dtype=np.float32)
    nearest: NearestLabeled | None = None
    if knn:
        if m == 0:
            assert mean is not None
            nearest = NearestLabeled(l2_normalize(mean[None, :].copy()))
        else:
            nearest = knn_index if knn_index is not None else NearestLabeled.build(labeled, exact_max_labeled=exact_max_labeled)
        out["knn"] = np.empty(n, dtype=np.float32)

    def block(s: int, e: int) -> None:
        x = source.chunk(s, e)
        inv = inverse_norms(x)
        if fre_model is not None:
            out["fre"][s:e] = fre_model.score(x, probs[s:e].argmax(axis=1), inv)
        if nearest is not None:
            sim, _ = nearest.search(x, inv, labeled_chunk_size=labeled_chunk_size)
            out["knn"][s:e] = np.clip(1.0 - sim, 0.0, 2.0)

    if nearest is not None:
        nearest.prepare()
    for_each_block(block, n, chunk_size, threads=threads)
    return out
