"""Improved precision and recall (Kynkäänniemi et al. 2019) and density and coverage
(Naeem et al. 2020), on sets of equal size.

k-NN hyperspheres approximate each manifold: precision is the share of fake samples on the
real manifold, recall the share of real samples on the fake manifold. k-NN radii shrink as a
set grows, so comparing 60k real against 2k fake points inflates recall and deflates
precision; both functions therefore subsample the larger set (seeded) to the smaller one's
size first, as the reference implementations compare equal sets.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

import torch

from ..errors import CbdmError
from ._common import ArrayLike, InsufficientSamplesError, as_torch2d, check_same_dim, equal_size_indices, take
from .knn import BUDGET, ball_counts, knn_radii, manifold_coverage, nearest_distance


class RadiiCache(Protocol):
    """Where the k-NN radii of (a seeded subsample of) the real set are kept between calls.

    ``key`` names ``k``, the subsample size, the full size and the seed; the cache itself must
    be specific to one real set and extractor (the evaluation keys it by the reference's cache key).
    """

    def get(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor: ...


class EqualSets:
    """The real and fake sets subsampled to a common size ``n``, with the real k-NN radii."""

    def __init__(self, real: torch.Tensor, fake: torch.Tensor, k: int, seed: int,
                 radii_cache: Optional[RadiiCache], budget_bytes: int) -> None:
        n = min(real.shape[0], fake.shape[0])
        if n <= k:
            raise InsufficientSamplesError(f"k={k} needs at least {k + 1} samples in each set, "
                                           f"got {real.shape[0]} real and {fake.shape[0]} fake")
        # Different seeds for the two sets: never the same row positions by construction.
        self.real = take(real, equal_size_indices(real.shape[0], n, seed))
        self.fake = take(fake, equal_size_indices(fake.shape[0], n, seed + 1))
        self.n, self.k, self.budget = n, k, budget_bytes

        def compute() -> torch.Tensor:
            return knn_radii(self.real, k, budget_bytes)

        key = f"k{k}-n{n}-of{real.shape[0]}-seed{seed}"
        radii = compute() if radii_cache is None else radii_cache.get(key, compute)
        self.real_radii = radii.to(device=self.real.device, dtype=self.real.dtype)


def _prepare(real_features: ArrayLike, fake_features: ArrayLike, k: int, seed: int,
             device: str | torch.device | None, radii_cache: Optional[RadiiCache], budget_bytes: int) -> EqualSets:
    if k < 1:
        raise CbdmError(f"k must be >= 1, got {k}")
    real = as_torch2d(real_features, "real features", device=device)
    fake = as_torch2d(fake_features, "fake features", device=device)
    check_same_dim(real, fake)
    return EqualSets(real, fake, k, seed, radii_cache, budget_bytes)


def precision_recall_n(real_features: ArrayLike, fake_features: ArrayLike, k: int = 5, *, seed: int = 0,
                       device: str | torch.device | None = None, radii_cache: Optional[RadiiCache] = None,
                       budget_bytes: int = BUDGET) -> tuple[float, float, int]:
    """``(precision, recall, n)``: :func:`precision_recall` and the common set size used."""
    s = _prepare(real_features, fake_features, k, seed, device, radii_cache, budget_bytes)
    precision = manifold_coverage(s.fake, s.real, s.real_radii, budget_bytes)
    recall = manifold_coverage(s.real, s.fake, knn_radii(s.fake, k, budget_bytes), budget_bytes)
    return precision, recall, s.n


def precision_recall(real_features: ArrayLike, fake_features: ArrayLike, k: int = 5, *, seed: int = 0,
                     device: str | torch.device | None = None, radii_cache: Optional[RadiiCache] = None,
                     budget_bytes: int = BUDGET) -> tuple[float, float]:
    """Improved precision and recall of ``[N, D]`` fake features against real ones.

    The larger set is subsampled (seeded by ``seed``) to the smaller one's size. Each set
    needs more than ``k`` samples, else :class:`InsufficientSamplesError`. Distances are
    float64 and computed in blocks of about ``budget_bytes``. ``radii_cache`` (optional)
    keeps the real k-NN radii between calls on the same real set.
    """
    p, r, _ = precision_recall_n(real_features, fake_features, k, seed=seed, device=device,
                                 radii_cache=radii_cache, budget_bytes=budget_bytes)
    return p, r


def density_coverage_n(real_features: ArrayLike, fake_features: ArrayLike, k: int = 5, *, seed: int = 0,
                       device: str | torch.device | None = None, radii_cache: Optional[RadiiCache] = None,
                       budget_bytes: int = BUDGET) -> tuple[float, float, int]:
    """``(density, coverage, n)``: :func:`density_coverage` and the common set size used."""
    s = _prepare(real_features, fake_features, k, seed, device, radii_cache, budget_bytes)
    # density: how many real k-NN balls contain each fake sample, over k (1 on average when
    # the distributions match); coverage: share of real balls holding at least one fake sample.
    density = float(ball_counts(s.fake, s.real, s.real_radii, budget_bytes).double().mean()) / k
    coverage = float((nearest_distance(s.real, s.fake, budget_bytes) < s.real_radii).double().mean())
    return density, coverage, s.n


def density_coverage(real_features: ArrayLike, fake_features: ArrayLike, k: int = 5, *, seed: int = 0,
                     device: str | torch.device | None = None, radii_cache: Optional[RadiiCache] = None,
                     budget_bytes: int = BUDGET) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020) of fake features against real ones.

    Density counts, per fake sample, the real k-NN balls (open, radius to the k-th nearest
    other real sample) containing it, divided by ``k`` and averaged (unbounded; about 1 for
    matching distributions). Coverage is the share of real samples whose ball holds at least
    one fake sample. Sets are equalised as in :func:`precision_recall`.
    """
    d, c, _ = density_coverage_n(real_features, fake_features, k, seed=seed, device=device,
                                 radii_cache=radii_cache, budget_bytes=budget_bytes)
    return d, c


__all__ = ["EqualSets", "RadiiCache", "density_coverage", "density_coverage_n", "knn_radii",
           "manifold_coverage", "precision_recall", "precision_recall_n"]
