"""Shared helpers for the metrics: input conversion and the "loud" warning."""

from __future__ import annotations

import logging
import warnings
from typing import Union

import numpy as np
import torch

from ..errors import CbdmError

ArrayLike = Union[np.ndarray, torch.Tensor]

log = logging.getLogger("cbdm.metrics")


class MetricWarning(UserWarning):
    """A metric value that is unreliable or could not be computed."""


class InsufficientSamplesError(CbdmError):
    """Too few samples for a metric; the metric plugins report it as not computed."""


def warn(message: str) -> None:
    """Warn through both ``warnings`` (tests, notebooks) and ``logging`` (run logs)."""
    log.warning(message)
    warnings.warn(message, MetricWarning, stacklevel=3)


def as_numpy64(x: ArrayLike, name: str, ndim: int | None = None) -> np.ndarray:
    """``x`` as a float64 numpy array, checking the number of dimensions."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if ndim is not None and arr.ndim != ndim:
        raise CbdmError(f"{name} must have {ndim} dimension(s), got shape {tuple(arr.shape)}")
    return arr


def as_torch2d(x: ArrayLike, name: str, device: str | torch.device | None = None,
               dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """``x`` as a ``[N, D]`` torch tensor on ``device`` (default: where it is).

    ``dtype=None`` keeps a floating dtype (no float64 copy of a large matrix) and turns
    anything else into float64.
    """
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.dim() != 2:
        raise CbdmError(f"{name} must be a [N, D] feature matrix, got shape {tuple(t.shape)}")
    if dtype is None:
        dtype = t.dtype if t.is_floating_point() else torch.float64
    return t.to(device=device if device is not None else t.device, dtype=dtype)


def check_same_dim(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> None:
    """Both feature sets must come from the same extractor layer."""
    if a.shape[1] != b.shape[1]:
        raise CbdmError(
            f"real and fake features have different dimensions ({a.shape[1]} vs {b.shape[1]}); "
            "were they extracted with the same feature extractor?"
        )


def row_chunk(num_cols: int, itemsize: int = 8, budget_bytes: int = 256 * 2**20) -> int:
    """Rows per chunk so that a ``[rows, num_cols]`` matrix stays within ``budget_bytes``."""
    return max(1, budget_bytes // max(1, num_cols * itemsize))


def equal_size_indices(n_total: int, n: int, seed: int) -> np.ndarray | None:
    """Sorted, seeded choice of ``n`` of ``n_total`` rows; ``None`` when all are used.

    The choice depends only on ``(n_total, n, seed)``, so a cache of statistics of the
    subsample (e.g. reference k-NN radii) can be keyed by them.
    """
    if n >= n_total:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_total, n, replace=False))


def take(x: torch.Tensor, idx: np.ndarray | None) -> torch.Tensor:
    """Rows ``idx`` of ``x`` (all rows for ``None``)."""
    return x if idx is None else x[torch.as_tensor(idx, device=x.device)]
