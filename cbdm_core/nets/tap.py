"""Feature taps: where a method may read an internal feature of a backbone.

A backbone that supports feature-reading methods (CORAL's contrastive head) offers
``feature_tap() -> FeatureTap``: the module whose forward output is the feature, a
pooling function turning that output into one vector per row, and the vector size.
A method registers a forward hook on ``tap.module``; the network itself is unchanged
(no parameter is renamed, no output changes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


def spatial_mean(h: torch.Tensor) -> torch.Tensor:
    """Global average pool of a feature map ``[N, C, H, W] -> [N, C]``."""
    return h.mean(dim=(2, 3))


def token_mean(h: torch.Tensor) -> torch.Tensor:
    """Mean over tokens ``[N, L, D] -> [N, D]``."""
    return h.mean(dim=1)


@dataclass(frozen=True)
class FeatureTap:
    """A feature inside a backbone.

    Attributes:
        module: the submodule whose forward output carries the feature.
        pool: maps that output to ``[N, dim]`` (module-level functions, so models deep-copy).
        dim: size of the pooled feature.
    """

    module: nn.Module
    pool: Callable[[torch.Tensor], torch.Tensor]
    dim: int
