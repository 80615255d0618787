"""Boost-and-Skip (Um, Kim & Ye, ICML 2025; https://github.com/soobin-um/BnS): guidance-free
minority generation by two changes at the start of the reverse chain.

* boost: the starting noise is scaled by ``gamma`` (variance ``gamma^2`` instead of 1);
* skip: the first ``Delta_t`` (largest) timesteps of the visited sequence are dropped, so the
  boosted noise enters the chain at the ``Delta_t``-th visited timestep.

As in the released sampling loops, ``Delta_t`` counts *visited* steps (of the respaced
sequence), and the defaults ``gamma = 1``, ``Delta_t = 0`` leave sampling unchanged (the
README's settings are gamma 4.0 / Delta_t 3 for CelebA and 2.5 / 3 for ImageNet-64, with 250
steps).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
from pydantic import BaseModel, Field

from ..errors import CbdmError


class BoostSkipOptions(BaseModel):
    """The Boost-and-Skip sampler options (``-S boost_gamma=G -S skip=D``), shared by ddpm and ddim.

    Args:
        boost_gamma: the authors' ``--gamma``: the starting noise is multiplied by it (default 1.0).
        skip: the authors' ``--Delta_t``: visited timesteps dropped at the start (default 0).
    """

    boost_gamma: float = Field(1.0, gt=0.0)
    skip: int = Field(0, ge=0)


def boost_and_skip(x_T: torch.Tensor, timesteps_desc: Sequence[int], boost_gamma: float = 1.0,
                   skip: int = 0) -> tuple[torch.Tensor, list[int]]:
    """``(gamma * x_T, timesteps_desc[skip:])``: the boosted start and the timesteps still visited
    (largest first). At least one timestep must remain."""
    steps = list(timesteps_desc)
    gamma, skip = float(boost_gamma), int(skip)
    if not gamma > 0.0:
        raise CbdmError(f"boost_gamma must be > 0, got {boost_gamma}")
    if not 0 <= skip < len(steps):
        raise CbdmError(f"skip must lie in 0..{len(steps) - 1} (it drops visited steps of {len(steps)}), got {skip}")
    return (x_T * gamma if gamma != 1.0 else x_T), steps[skip:]


def warn_if_deterministic(boost_gamma: float, eta: float, clip: bool) -> None:
    """Warn when a boosted start meets deterministic DDIM (eta 0) or unclipped x_0.

    Measured on the digits-lt DDPM (docs/results.md, digits-lt-sampling): gamma 4 with eta 0 gives
    pure noise (class accuracy at chance), with or without clipping, because the deterministic path
    carries the boosted noise in its eps term down to the last step; with eta 1 and x_0 clipped
    (the authors' ancestral, clipped sampling) it gives digits.
    """
    if float(boost_gamma) > 1.0 and (float(eta) == 0.0 or not clip):
        warnings.warn(f"Boost-and-Skip with boost_gamma={boost_gamma:g} on ddim with eta={eta:g} and "
                      f"clip={'on' if clip else 'off'}: the authors sample ancestrally with x_0 clipped "
                      "(--eta 1 --clip); a deterministic or unclipped path can keep the boosted noise to "
                      "the last step (docs/sampling.md)", UserWarning, stacklevel=3)
