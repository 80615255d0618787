"""Chunked nearest-neighbour primitives shared by precision/recall, density/coverage and
memorisation. Every function works in row blocks of about ``budget_bytes`` so a 50k x 50k
distance matrix is never held at once."""

from __future__ import annotations

import torch

from ._common import row_chunk

BUDGET = 256 * 2**20


def _blocks(queries: torch.Tensor, centers: torch.Tensor, budget_bytes: int):
    """``(start, distances [rows, len(centers)])`` for consecutive row blocks of ``queries``."""
    step = row_chunk(centers.shape[0], centers.element_size(), budget_bytes)
    for i in range(0, queries.shape[0], step):
        yield i, torch.cdist(queries[i:i + step], centers)


def knn_radii(points: torch.Tensor, k: int, budget_bytes: int = BUDGET) -> torch.Tensor:
    """Distance of every row to its ``k``-th nearest *other* row."""
    radii = torch.empty(points.shape[0], dtype=points.dtype, device=points.device)
    for i, d in _blocks(points, points, budget_bytes):
        # k + 1 because the point itself (distance 0) is among the nearest.
        radii[i:i + d.shape[0]] = d.topk(k + 1, dim=1, largest=False).values[:, -1]
    return radii


def manifold_coverage(queries: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor,
                      budget_bytes: int = BUDGET) -> float:
    """Fraction of ``queries`` inside at least one closed ball ``(centers[i], radii[i])``."""
    inside = 0
    for _, d in _blocks(queries, centers, budget_bytes):
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / queries.shape[0]


def ball_counts(queries: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor,
                budget_bytes: int = BUDGET) -> torch.Tensor:
    """For each query, the number of open balls ``(centers[i], radii[i])`` containing it."""
    out = torch.empty(queries.shape[0], dtype=torch.int64, device=queries.device)
    for i, d in _blocks(queries, centers, budget_bytes):
        out[i:i + d.shape[0]] = (d < radii[None, :]).sum(dim=1)
    return out


def two_nearest(queries: torch.Tensor, refs: torch.Tensor, budget_bytes: int = BUDGET,
                candidates: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances from each query to its nearest and second-nearest row of ``refs`` (float64).

    The fast matrix-product distances round (an exact copy can come out at 0.5 instead of 0
    for 0..255 pixels in float32), so the ``candidates`` nearest rows they find are re-measured
    exactly as ``||q - r||`` in float64: copies get exactly 0.
    """
    d1, d2, _ = two_nearest_with_index(queries, refs, budget_bytes, candidates)
    return d1, d2


def two_nearest_with_index(queries: torch.Tensor, refs: torch.Tensor, budget_bytes: int = BUDGET,
                           candidates: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`two_nearest` plus the row of ``refs`` nearest to each query (int64)."""
    d1 = torch.empty(queries.shape[0], dtype=torch.float64, device=queries.device)
    d2 = torch.empty_like(d1)
    nearest = torch.empty(queries.shape[0], dtype=torch.int64, device=queries.device)
    m = min(max(2, candidates), refs.shape[0])
    for i, d in _blocks(queries, refs, budget_bytes):
        idx = d.topk(m, dim=1, largest=False).indices
        q = queries[i:i + d.shape[0]].to(torch.float64)
        exact, order = (refs[idx].to(torch.float64) - q[:, None, :]).norm(dim=2).sort(dim=1)
        d1[i:i + d.shape[0]] = exact[:, 0]
        d2[i:i + d.shape[0]] = exact[:, min(1, m - 1)]
        nearest[i:i + d.shape[0]] = idx.gather(1, order[:, :1]).squeeze(1)
    return d1, d2, nearest


def nearest_distance(queries: torch.Tensor, refs: torch.Tensor, budget_bytes: int = BUDGET) -> torch.Tensor:
    """Distance from each query to its nearest row of ``refs``."""
    out = torch.empty(queries.shape[0], dtype=queries.dtype, device=queries.device)
    for i, d in _blocks(queries, refs, budget_bytes):
        out[i:i + d.shape[0]] = d.min(dim=1).values
    return out
