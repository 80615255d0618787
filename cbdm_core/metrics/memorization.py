"""Memorisation (Yoon et al. 2023): a generated sample counts as a copy of the training set
when its nearest training row is much closer than the second-nearest one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..errors import CbdmError
from ._common import ArrayLike, as_torch2d, check_same_dim
from .knn import BUDGET, two_nearest_with_index

THRESHOLD = 1.0 / 3.0


@dataclass
class TrainingReference:
    """The set a model was trained on, as the memorisation metric needs it.

    Attributes:
        images: ``uint8 [N, C, H, W]`` training images (the long-tailed set, not the balanced
            reference).
        features: ``float [N, D]`` features of those images under the evaluation's extractor.
        labels: ``int64 [N]``.
        description: where it came from, for the report.
    """

    images: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor
    description: str = ""


@dataclass
class NearestTraining:
    """Per generated row: distances to its nearest (``d1``) and second-nearest (``d2``) training
    row, the index of the nearest one in the training set, and the memorisation flag."""

    d1: np.ndarray
    d2: np.ndarray
    nearest: np.ndarray
    memorized: np.ndarray


def nearest_training(generated: ArrayLike, train: ArrayLike, *, threshold: float = THRESHOLD,
                     device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                     budget_bytes: int = BUDGET) -> NearestTraining:
    """Everything the memorisation flag is decided from, per generated row (what ``records.csv`` keeps)."""
    if not 0 < threshold <= 1:
        raise CbdmError(f"memorisation threshold must be in (0, 1], got {threshold}")
    gen = as_torch2d(generated, "generated", device=device, dtype=dtype)
    ref = as_torch2d(train, "train", device=device, dtype=dtype)
    check_same_dim(ref, gen)
    if ref.shape[0] < 2:
        raise CbdmError(f"memorisation needs at least 2 training rows, got {ref.shape[0]}")
    d1, d2, nearest = (t.cpu().numpy() for t in two_nearest_with_index(gen, ref, budget_bytes))
    d1, d2 = d1.astype(np.float64), d2.astype(np.float64)
    return NearestTraining(d1, d2, nearest.astype(np.int64), (d1 < threshold * d2) | (d1 == 0))


def nearest_ratio(generated: ArrayLike, train: ArrayLike, *, device: str | torch.device | None = None,
                  dtype: torch.dtype = torch.float32, budget_bytes: int = BUDGET) -> tuple[np.ndarray, np.ndarray]:
    """``(d1, d2)``: per generated row, the distances to its nearest and second-nearest training row."""
    near = nearest_training(generated, train, device=device, dtype=dtype, budget_bytes=budget_bytes)
    return near.d1, near.d2


def memorization(generated: ArrayLike, train: ArrayLike, *, threshold: float = THRESHOLD,
                 device: str | torch.device | None = None, budget_bytes: int = BUDGET) -> np.ndarray:
    """One flag per generated row: ``d1 / d2 < threshold`` for the distances ``d1``, ``d2`` to its
    nearest and second-nearest training row (``[N, D]`` pixels or features).

    An exact copy of a training row that itself appears twice (``d1 = d2 = 0``) counts as
    memorised. Distances are float32, computed in blocks of about ``budget_bytes``.
    """
    return nearest_training(generated, train, threshold=threshold, device=device,
                            budget_bytes=budget_bytes).memorized


def rate(flags: np.ndarray, mask: Optional[np.ndarray] = None) -> Optional[float]:
    """Share of flagged rows (within ``mask``); ``None`` for no rows."""
    chosen = flags if mask is None else flags[mask]
    return float(chosen.mean()) if len(chosen) else None
