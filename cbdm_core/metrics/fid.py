"""Fréchet distance between Gaussians fitted to features (FID when the features are
Inception pool3 features)."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch

from ..errors import CbdmError
from ._common import ArrayLike, InsufficientSamplesError, as_numpy64, as_torch2d, check_same_dim, row_chunk, warn

# Relative error of sqrtm above which the product is treated as (near) singular and the
# eps*I regularised retry is used, as in the reference implementations.
_SQRTM_REL_ERR = 1e-5
# Largest tolerated imaginary part on the diagonal of the square root (pytorch-fid's value).
_IMAG_ATOL = 1e-3


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


def _sqrtm(a: np.ndarray) -> tuple[np.ndarray, float]:
    """Matrix square root and its relative error ``||X X - A||_F / ||A||_F``."""
    with warnings.catch_warnings():
        # Singular products are expected for rank-deficient covariances; handled by the retry.
        warnings.simplefilter("ignore")
        root = scipy.linalg.sqrtm(a)
    if not np.all(np.isfinite(root)):
        return root, float("inf")
    norm = np.linalg.norm(a, "fro")
    err = np.linalg.norm(root @ root - a, "fro") / norm if norm > 0 else 0.0
    return root, float(err)


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike,
                     eps: float = 1e-6) -> float:
    """Fréchet distance ``||mu1-mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`` between two Gaussians.

    When the product is singular (non-finite or inaccurate square root) ``eps * I`` is
    added to both covariances and the root recomputed. Raises ``CbdmError`` if the root
    keeps a large imaginary component.
    """
    m1, m2 = as_numpy64(mu1, "mu1", 1), as_numpy64(mu2, "mu2", 1)
    s1, s2 = as_numpy64(sigma1, "sigma1", 2), as_numpy64(sigma2, "sigma2", 2)
    d = m1.shape[0]
    if m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise CbdmError(
            f"Gaussian statistics do not match: mu1 {m1.shape}, sigma1 {s1.shape}, "
            f"mu2 {m2.shape}, sigma2 {s2.shape}"
        )
    diff = m1 - m2
    covmean, err = _sqrtm(s1 @ s2)
    if err > _SQRTM_REL_ERR:
        offset = np.eye(d) * eps
        covmean, err = _sqrtm((s1 + offset) @ (s2 + offset))
        if not np.all(np.isfinite(covmean)):
            raise CbdmError("Fréchet distance: the covariance product has no finite square root "
                            "even after regularisation; are the features finite?")
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        if imag > _IMAG_ATOL:
            raise CbdmError(f"Fréchet distance: matrix square root has a large imaginary component "
                            f"({imag:.3g}); the covariances are ill-conditioned, use more samples")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid_from_features(real: ArrayLike, fake: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two ``[N, D]`` feature sets."""
    check_same_dim(as_torch2d(real, "real features", dtype=None),
                   as_torch2d(fake, "fake features", dtype=None))
    mu1, s1 = feature_statistics(real)
    mu2, s2 = feature_statistics(fake)
    return frechet_distance(mu1, s1, mu2, s2)
