"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased polynomial-kernel MMD^2
averaged over random subsets."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import CbdmError
from ._common import ArrayLike, InsufficientSamplesError, as_torch2d, check_same_dim


def _poly_kernel(x: torch.Tensor, y: torch.Tensor, degree: int, gamma: float, coef0: float) -> torch.Tensor:
    return (x @ y.T * gamma + coef0) ** degree


def _mmd2_unbiased(kxx: torch.Tensor, kxy: torch.Tensor, kyy: torch.Tensor) -> float:
    """Unbiased MMD^2: within-set sums drop the diagonal, the cross term keeps it."""
    m = kxx.shape[0]
    sum_xx = kxx.sum() - kxx.diagonal().sum()
    sum_yy = kyy.sum() - kyy.diagonal().sum()
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * kxy.sum() / (m * m))


def kid(real: ArrayLike, fake: ArrayLike, subsets: int = 100, subset_size: int = 1000,
        degree: int = 3, gamma: float | None = None, coef0: float = 1.0, seed: int = 0,
        device: str | torch.device | None = None) -> tuple[float, float]:
    """Mean and std of the unbiased MMD^2 with kernel ``(gamma x.y + coef0)^degree``.

    ``gamma`` defaults to ``1 / D``. ``subset_size`` is clipped to the smaller set size;
    each of the ``subsets`` draws samples without replacement (seeded by ``seed``).
    """
    x = as_torch2d(real, "real features", device=device)
    y = as_torch2d(fake, "fake features", device=device)
    check_same_dim(x, y)
    if isinstance(subset_size, bool) or not isinstance(subset_size, (int, np.integer)) or subset_size < 2:
        raise CbdmError(f"KID subset_size must be an integer >= 2, got {subset_size!r}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise InsufficientSamplesError(f"KID needs at least 2 samples in each set, "
                                       f"got {x.shape[0]} real and {y.shape[0]} fake")
    if subsets < 1:
        raise CbdmError(f"KID subsets must be >= 1, got {subsets}")
    g = 1.0 / x.shape[1] if gamma is None else gamma
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        xs = x[torch.as_tensor(rng.choice(x.shape[0], m, replace=False), device=x.device)]
        ys = y[torch.as_tensor(rng.choice(y.shape[0], m, replace=False), device=y.device)]
        values[i] = _mmd2_unbiased(_poly_kernel(xs, xs, degree, g, coef0),
                                   _poly_kernel(xs, ys, degree, g, coef0),
                                   _poly_kernel(ys, ys, degree, g, coef0))
    return float(values.mean()), float(values.std())
