"""Small helpers shared by the samplers."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..errors import CbdmError
from ..interfaces import DenoiseFn


def reject_unknown_options(sampler: str, options: Mapping[str, Any], known: tuple[str, ...]) -> None:
    """Raise on sampler options the sampler does not take (instead of a TypeError)."""
    if options:
        unknown = ", ".join(sorted(options))
        allowed = ", ".join(known) or "(none)"
        raise CbdmError(f"sampler {sampler!r} got unknown option(s) {unknown}; it takes: {allowed}")


def timestep_batch(t: int, x: torch.Tensor) -> torch.Tensor:
    """``t`` repeated for every row of ``x``, int64 on ``x``'s device."""
    return torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)


def predict_eps(denoise_fn: DenoiseFn, x: torch.Tensor, t: int, y: torch.Tensor) -> torch.Tensor:
    """One network call at integer timestep ``t``, cast to ``x``'s dtype (autocast may return fp32)."""
    eps = denoise_fn(x, timestep_batch(t, x), y)
    if eps.shape != x.shape:
        raise CbdmError(f"the denoiser returned shape {tuple(eps.shape)} for input {tuple(x.shape)}")
    return eps.to(x.dtype)


def check_eta(eta: float) -> float:
    eta = float(eta)
    if not eta >= 0.0:  # also catches NaN
        raise CbdmError(f"eta must be >= 0, got {eta}")
    return eta
