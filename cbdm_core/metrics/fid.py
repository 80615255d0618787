"""Fréchet distance between Gaussians fitted to features (FID when the features are
Inception pool3 features)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import CbdmError
from ._common import ArrayLike, InsufficientSamplesError, as_numpy64, as_torch2d, check_same_dim, row_chunk, warn

def feature_statistics(features: ArrayLike, *, warn_rank: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of ``[N, D]`` features.

    Needs ``N >= 2``; warns (``MetricWarning`` + log) when ``N < D``, because the
    covariance is then rank-deficient and the FID is biased and noisy.
    """
    x = as_torch2d(features, "features", dtype=None)
    n, d = x.shape
    if n < 2:
        raise InsufficientSamplesError(f"feature statistics need at least 2 samples, got {n}")
    if warn_rank and n < d:
        warn(f"only {n} samples for {d}-dimensional features: the covariance is rank-deficient, "
             "FID will be biased and unreliable")
    # Two passes in float64, chunked over rows so 50k x 2048 never needs a float64 copy.
    step = row_chunk(d)
    mu = torch.zeros(d, dtype=torch.float64, device=x.device)
    for i in range(0, n, step):
        mu += x[i:i + step].to(torch.float64).sum(dim=0)
    mu /= n
    cov = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    for i in range(0, n, step):
        c = x[i:i + step].to(torch.float64) - mu
        cov += c.T @ c
    cov /= n - 1
    return mu.cpu().numpy(), cov.cpu().numpy()


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance (negative rounding-error eigenvalues clipped)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``Tr((S1 S2)^{1/2})`` for covariances S1, S2.

    S1 S2 is similar to the symmetric PSD matrix ``R S2 R`` with ``R = S1^{1/2}``, so the trace
    is the sum of the square roots of that matrix's eigenvalues: two symmetric eigen-
    decompositions instead of a general matrix square root (about 15x faster at d = 2048,
    the same value to ~1e-13 relative, and no imaginary parts or eps*I retry for singular
    covariances).
    """
    r = _psd_sqrt(sigma1)
    m = r @ sigma2 @ r
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet distance ``||mu1-mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`` between two Gaussians.

    The trace of the square root comes from :func:`trace_sqrt_product`, which handles
    singular (rank-deficient) covariances without regularisation.
    """
    m1, m2 = as_numpy64(mu1, "mu1", 1), as_numpy64(mu2, "mu2", 1)
    s1, s2 = as_numpy64(sigma1, "sigma1", 2), as_numpy64(sigma2, "sigma2", 2)
    d = m1.shape[0]
    if m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise CbdmError(
            f"Gaussian statistics do not match: mu1 {m1.shape}, sigma1 {s1.shape}, "
            f"mu2 {m2.shape}, sigma2 {s2.shape}"
        )
    if not all(np.all(np.isfinite(a)) for a in (m1, m2, s1, s2)):
        raise CbdmError("Fréchet distance: the feature statistics are not finite; are the features finite?")
    diff = m1 - m2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
    return max(value, 0.0)  # rounding can take identical Gaussians a hair below zero


def fid_from_features(real: ArrayLike, fake: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two ``[N, D]`` feature sets."""
    check_same_dim(as_torch2d(real, "real features", dtype=None),
                   as_torch2d(fake, "fake features", dtype=None))
    mu1, s1 = feature_statistics(real)
    mu2, s2 = feature_statistics(fake)
    return frechet_distance(mu1, s1, mu2, s2)
