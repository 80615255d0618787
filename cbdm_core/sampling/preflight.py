"""Checks of a sampling request before any folder is made or any network call is spent.

:func:`preflight` runs the resolved sampler once on one image with a dummy denoiser, so the
sampler and guidance themselves judge their settings; the request's own numbers (labels,
shard size, sample indices) are checked here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch

from ..errors import CbdmError
from .core import sample_resolved
from .noise import sample_generators
from .precision_mode import check_precision
from .resolved import ResolvedSampling
from .settings import SamplingSettings

if TYPE_CHECKING:
    from ..run import LoadedRun


class _NullDenoiser:
    """Stands in for the network in :func:`preflight`: predicts zero noise."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def preflight(run: "LoadedRun", sampling: ResolvedSampling) -> None:
    """Run the resolved sampler once on one image with a dummy denoiser.

    The sampler itself then rejects bad settings (unknown option, ``steps > T``, ddpm with
    ``steps != T`` or an eta, ...) before any folder is made or any network call is spent.
    """
    # The run's image shape, not one pixel: a guidance with its own network (a classifier) checks it.
    # A stand-in without a model or metadata (training's evaluation check) gets one pixel.
    known = getattr(run, "meta", None) or getattr(run, "model", None) is not None
    x = torch.zeros(1, *(image_shape(run) if known else (1, 1, 1)))
    device = _model_device(run)
    if device is not None:  # bf16 is checked on the run's device; the stand-in runs on the CPU in fp32
        check_precision(sampling.settings.precision, device)
    fp32 = sampling.replace(sampling.settings.model_copy(update={"precision": "fp32"}))
    sample_resolved(_NullDenoiser(run.num_classes), run.schedule, x, torch.zeros(1, dtype=torch.long), fp32,
                    generator=sample_generators(0, [0]))


def _model_device(run: "LoadedRun") -> Optional[torch.device]:
    """The device of ``run``'s network, or None for a stand-in without one."""
    params = getattr(getattr(run, "model", None), "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return None if first is None else first.device


def estimate_output_bytes(num: int, image_shape: Sequence[int]) -> int:
    """Bytes the shards of ``num`` images of ``image_shape`` take (uint8, uncompressed)."""
    return int(num) * int(np.prod([int(s) for s in image_shape])) + 8 * int(num)


def image_shape(run: "LoadedRun") -> tuple[int, int, int]:
    """``(C, H, W)`` from the checkpoint metadata (the model as fallback)."""
    meta = run.meta
    if meta.channels is not None and meta.image_size is not None:
        return meta.channels, meta.image_size, meta.image_size
    return int(run.model.channels), int(run.model.image_size), int(run.model.image_size)


def check_request(run: "LoadedRun", labels_np: np.ndarray, st: SamplingSettings, shard_size: int,
                   C: int) -> None:
    """Refuse a request that cannot be sampled, before anything is run (the settings' own
    numbers, batch size, eta and guidance included, were checked when they were made)."""
    if run.num_classes == 0 and float(st.guidance) != 0:
        raise CbdmError("guidance needs a class-conditional model; this one is unconditional")
    if int(labels_np.size) <= 0:
        raise CbdmError("the number of samples must be positive")
    if shard_size <= 0:
        raise CbdmError(f"shard size must be positive, got {shard_size}")
    bad = (labels_np < 0) | (labels_np >= C)
    if bad.any():
        raise CbdmError(f"class index {int(labels_np[bad][0])} is out of range: the model has {C} classes "
                        f"(0..{C - 1})")


def chosen_indices(indices: Optional[Sequence[int]], num: int, image_format: str) -> Optional[np.ndarray]:
    """The sorted unique sample indices to (re)make, or ``None`` for all missing ones."""
    if image_format not in ("npz", "png"):
        raise CbdmError(f"unknown image format {image_format!r}; choose npz or png")
    chosen = None if indices is None else np.unique(np.asarray(list(indices), dtype=np.int64))
    if chosen is not None and (chosen.size == 0 or chosen[0] < 0 or chosen[-1] >= num):
        raise CbdmError(f"the chosen sample indices must lie in 0..{num - 1}"
                        + (f", got {int(chosen[-1])}" if chosen is not None and chosen.size else ""))
    return chosen


def checked_sampling(run: "LoadedRun", sampling: ResolvedSampling) -> ResolvedSampling:
    """How to sample on ``run``: ``sampling`` with its steps resolved, checked by the sampler
    itself on a dummy denoiser."""
    how = sampling.with_steps(run.schedule.num_timesteps)
    preflight(run, how)
    return how
