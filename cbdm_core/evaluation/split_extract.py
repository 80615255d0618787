"""Feature extraction split across the processes of a torchrun job (``cbdm eval`` under torchrun).

Each rank extracts a contiguous index range of the images (rank r of W takes
``[N*r/W, N*(r+1)/W)``) and every rank receives the whole set, in the original order, so the
result does not depend on the number of processes (up to the extractor's own batch effects).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..features.base import FeatureSet


def index_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous ``[start, stop)`` of ``n`` items that ``rank`` of ``world`` takes."""
    return n * rank // world, n * (rank + 1) // world


def extract_features(extractor: Any, images: torch.Tensor, *, batch_size: int, device: torch.device,
                     ctx: Optional[Any] = None) -> FeatureSet:
    """``extractor.extract(images)``; under torchrun (``ctx.enabled``) split by index range
    across the ranks and gathered, so every rank holds all features."""
    if ctx is None or not ctx.enabled or len(images) < ctx.world:
        return extractor.extract(images, batch_size=batch_size, device=device)
    import torch.distributed as dist

    lo, hi = index_range(len(images), ctx.rank, ctx.world)
    part = extractor.extract(images[lo:hi], batch_size=batch_size, device=device)
    mine = (part.features.cpu(), None if part.probs is None else part.probs.cpu(), part.extractor)
    gathered: list[Any] = [None] * ctx.world
    dist.all_gather_object(gathered, mine, group=ctx.control)
    features = torch.cat([g[0] for g in gathered])
    probs = None if any(g[1] is None for g in gathered) else torch.cat([g[1] for g in gathered])
    return FeatureSet(features, None, probs, extractor=part.extractor)
