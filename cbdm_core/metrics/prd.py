"""Precision and recall for distributions, PRD (Sajjadi et al. 2018).

Both feature sets are clustered together with k-means; the PRD curve compares the
two cluster histograms. The curve is averaged over several clusterings and
summarised by the maximal F_beta and F_{1/beta} scores.
"""

from __future__ import annotations

import numpy as np

from ..errors import CbdmError
from ._common import ArrayLike, InsufficientSamplesError, as_numpy64, check_same_dim, equal_size_indices

# The reference implementation's epsilon: keeps the angles off 0 and pi/2 and the
# F-score denominator off zero.
_EPS = 1e-10


def _cluster_histograms(real: np.ndarray, fake: np.ndarray, num_clusters: int,
                        seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster the union; normalised cluster histograms of the real and fake samples."""
    from sklearn.cluster import MiniBatchKMeans  # imported here: slow, and only PRD needs it

    data = np.concatenate([real, fake]).astype(np.float32, copy=False)
    kmeans = MiniBatchKMeans(n_clusters=num_clusters, n_init=10, random_state=seed)
    labels = kmeans.fit(data).labels_
    real_hist = np.bincount(labels[:len(real)], minlength=num_clusters) / len(real)
    fake_hist = np.bincount(labels[len(real):], minlength=num_clusters) / len(fake)
    return real_hist, fake_hist


def prd_from_histograms(real_hist: np.ndarray, fake_hist: np.ndarray,
                        num_angles: int = 1001) -> tuple[np.ndarray, np.ndarray]:
    """PRD curve: ``precision(l) = sum min(l p_real, p_fake)``, ``recall = precision / l``,
    for slopes ``l = tan(angle)`` with ``num_angles`` angles in ``(0, pi/2)``."""
    if not 3 <= num_angles <= 1_000_000:
        raise CbdmError(f"PRD num_angles must be in [3, 1000000], got {num_angles}")
    slopes = np.tan(np.linspace(_EPS, np.pi / 2 - _EPS, num_angles))
    precision = np.minimum(real_hist[None, :] * slopes[:, None], fake_hist[None, :]).sum(axis=1)
    recall = precision / slopes
    # Rounding can push values just above 1; anything larger is a bug, not rounding.
    if max(precision.max(), recall.max()) > 1.001:
        raise RuntimeError("PRD produced a value > 1.001; the histograms are not normalised")
    return np.clip(precision, 0, 1), np.clip(recall, 0, 1)


def prd_curve(real_features: ArrayLike, fake_features: ArrayLike, num_clusters: int,
              num_angles: int = 1001, num_runs: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """PRD curve (precision, recall arrays of length ``num_angles``) averaged over
    ``num_runs`` k-means clusterings seeded ``seed, seed + 1, ...``.

    As in the reference implementation the two sets have equal sizes: the larger one is
    subsampled (seeded by ``seed``) to the size of the smaller one.
    """
    real = as_numpy64(real_features, "real features", 2)
    fake = as_numpy64(fake_features, "fake features", 2)
    check_same_dim(real, fake)
    n = min(len(real), len(fake))
    idx_r, idx_f = equal_size_indices(len(real), n, seed), equal_size_indices(len(fake), n, seed + 1)
    real = real if idx_r is None else real[idx_r]
    fake = fake if idx_f is None else fake[idx_f]
    if num_clusters < 1:
        raise CbdmError(f"PRD num_clusters must be >= 1, got {num_clusters}")
    if num_runs < 1:
        raise CbdmError(f"PRD num_runs must be >= 1, got {num_runs}")
    if len(real) == 0 or len(fake) == 0 or len(real) + len(fake) < num_clusters:
        raise InsufficientSamplesError(f"PRD with {num_clusters} clusters needs at least {num_clusters} samples in all "
                        f"(and some in each set), got {len(real)} real and {len(fake)} fake")
    precisions, recalls = [], []
    for run in range(num_runs):
        real_hist, fake_hist = _cluster_histograms(real, fake, num_clusters, seed + run)
        p, r = prd_from_histograms(real_hist, fake_hist, num_angles)
        precisions.append(p)
        recalls.append(r)
    return np.mean(precisions, axis=0), np.mean(recalls, axis=0)


def max_f_beta(precision: np.ndarray, recall: np.ndarray, beta: float) -> float:
    """``max (1 + b^2) P R / (b^2 P + R)`` over the curve; 0 where ``P = R = 0``."""
    if beta <= 0:
        raise CbdmError(f"PRD beta must be > 0, got {beta}")
    f = (1 + beta**2) * precision * recall / (beta**2 * precision + recall + _EPS)
    return float(f.max())


def prd_fbeta(real_features: ArrayLike, fake_features: ArrayLike, num_clusters: int,
              beta: float = 8, num_angles: int = 1001, num_runs: int = 10,
              seed: int = 0) -> tuple[float, float]:
    """``(F_beta, F_1/beta)`` of the averaged PRD curve.

    With the default ``beta = 8``, ``F_8`` weighs recall (mode coverage) and ``F_1/8``
    weighs precision (sample quality). The larger set is subsampled to the smaller one's
    size (see :func:`prd_curve`).
    """
    precision, recall = prd_curve(real_features, fake_features, num_clusters, num_angles, num_runs, seed)
    return max_f_beta(precision, recall, beta), max_f_beta(precision, recall, 1.0 / beta)
