"""Improved precision and recall (Kynkäänniemi et al. 2019): k-NN hyperspheres
approximate each manifold; precision is the share of fake samples on the real
manifold, recall the share of real samples on the fake manifold."""

from __future__ import annotations

import torch

from ..errors import CbdmError
from ._common import ArrayLike, InsufficientSamplesError, as_torch2d, check_same_dim, row_chunk


def knn_radii(points: torch.Tensor, k: int, budget_bytes: int = 256 * 2**20) -> torch.Tensor:
    """Distance of every row to its ``k``-th nearest *other* row, computed in row chunks."""
    n = points.shape[0]
    step = row_chunk(n, points.element_size(), budget_bytes)
    radii = torch.empty(n, dtype=points.dtype, device=points.device)
    for i in range(0, n, step):
        d = torch.cdist(points[i:i + step], points)
        # k + 1 because the point itself (distance 0) is among the nearest.
        radii[i:i + step] = d.topk(k + 1, dim=1, largest=False).values[:, -1]
    return radii


def manifold_coverage(queries: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor,
                      budget_bytes: int = 256 * 2**20) -> float:
    """Fraction of ``queries`` inside at least one ball ``(centers[i], radii[i])``."""
    step = row_chunk(centers.shape[0], centers.element_size(), budget_bytes)
    inside = 0
    for i in range(0, queries.shape[0], step):
        d = torch.cdist(queries[i:i + step], centers)
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / queries.shape[0]


def precision_recall(real_features: ArrayLike, fake_features: ArrayLike, k: int = 5,
                     device: str | torch.device | None = None,
                     budget_bytes: int = 256 * 2**20) -> tuple[float, float]:
    """Improved precision and recall of ``fake_features`` against ``real_features``.

    Each set needs more than ``k`` samples (a k-th nearest other point); otherwise
    ``CbdmError``. Distances are float64 and computed in row chunks of about
    ``budget_bytes`` each, so 50k x 50k fits on a GPU or in RAM.
    """
    if k < 1:
        raise CbdmError(f"precision/recall k must be >= 1, got {k}")
    real = as_torch2d(real_features, "real features", device=device)
    fake = as_torch2d(fake_features, "fake features", device=device)
    check_same_dim(real, fake)
    if real.shape[0] <= k or fake.shape[0] <= k:
        raise InsufficientSamplesError(f"precision/recall with k={k} needs at least {k + 1} samples in each set, "
                        f"got {real.shape[0]} real and {fake.shape[0]} fake")
    precision = manifold_coverage(fake, real, knn_radii(real, k, budget_bytes), budget_bytes)
    recall = manifold_coverage(real, fake, knn_radii(fake, k, budget_bytes), budget_bytes)
    return precision, recall
