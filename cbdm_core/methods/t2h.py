"""Method ``t2h``: oriented calibration by target transfer (OC / T2H, ICLR 2024).

"Long-tailed Diffusion Models with Oriented Calibration" replaces the regression target of
the epsilon loss; it adds no forward pass. For a batch ``x0`` with labels ``y``, timesteps
``t`` and noise ``eps`` (``x_t = sqrt(ab) x0 + sqrt(1 - ab) eps``):

* ``c_i = x0_i + sigma_i eps_i = x_t,i / sqrt(ab_i)`` with ``sigma_i^2 = 1/ab_i - 1``;
* ``w_ij ∝ exp(-||c_i - x0_j||^2 / (2 sigma_i^2))`` over the whole batch, row ``i`` included
  (the posterior of "``x_t,i`` was made from ``x0_j``" under a uniform prior on the batch);
* ``j ~ Categorical(w_i)``, kept only where the gate allows it, else ``j = i``:
  ``t2h`` keeps ``j`` if ``p(y_j) >= p(y_i)`` (tail rows borrow from head images),
  ``h2t`` if ``p(y_j) <= p(y_i)``, ``full`` always; with ``cut_time`` only where ``t < cut_time``;
* target ``eps*_i = (x_t,i - sqrt(ab_i) x0_j) / sqrt(1 - ab_i)``, without gradient.

``p`` is the training class frequency; the gate reads the TRUE labels, also on rows whose
label was dropped for classifier-free training, and the transfer applies to those rows too.
Under ``torchrun`` the objective calls :meth:`T2HMethod.target` on the global batch (every
rank draws it from the same seed) and keeps its own rows, so the candidate pool is the whole
global batch, not a rank's shard.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import CbdmError
from .base import MethodBuildContext, PassOutputs, StepContext, TrainingMethod

PAPER = "Zhang et al., Long-tailed Diffusion Models with Oriented Calibration, ICLR 2024"
CODE = "https://github.com/MediaBrain-SJTU/OC_LT"
MODES = ("t2h", "h2t", "full")
Mode = Literal["t2h", "h2t", "full"]


class T2HOptions(BaseModel):
    """Options of the ``t2h`` method.

    Args:
        mode: gate of the transfer: ``t2h`` (towards more frequent classes), ``h2t``, ``full``.
        cut_time: transfer only on rows with ``t < cut_time`` (None: at every t).
    """

    model_config = ConfigDict(extra="forbid")

    mode: Mode = "t2h"
    cut_time: Optional[int] = Field(None, ge=0)


def transfer_weights(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule) -> torch.Tensor:
    """Row-normalised ``w_ij`` ``[B, B]`` (float64) of the batch's own images as sources of ``x_t,i``."""
    b = x0.shape[0]
    ab = schedule.alphas_cumprod.to(x0.device, torch.float64)[t.long()]
    # A float64 copy: at small t the self distance sigma^2 ||eps||^2 is tiny next to ||x0||^2.
    sigma2 = (1.0 / ab - 1.0).clamp_min(torch.finfo(torch.float64).tiny)
    x0f = x0.reshape(b, -1).to(torch.float64)
    c = x0f + sigma2.sqrt()[:, None] * noise.reshape(b, -1).to(torch.float64)
    d2 = torch.cdist(c, x0f, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    logits = -d2 / (2.0 * sigma2[:, None])
    logits = logits - logits.max(dim=1, keepdim=True).values  # row-max stabilised
    w = logits.exp()
    return w / w.sum(dim=1, keepdim=True)


def t2h_targets(x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule,
                class_freq: torch.Tensor, *, mode: str = "t2h", cut_time: Optional[int] = None,
                generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """T2H's transferred epsilon targets for one batch (for users with their own loop).

    Args:
        x0: clean images ``[B, ...]``; ``y``: their TRUE labels ``[B]``.
        t: integer timesteps ``[B]``; ``noise``: the eps that made ``x_t``.
        schedule: the :class:`~cbdm_core.schedules.NoiseSchedule`.
        class_freq: training frequency (or count) per class ``[C]``; only its order matters.
        mode: ``t2h``, ``h2t`` or ``full`` (see the module docstring).
        cut_time: transfer only where ``t < cut_time``.
        generator: for the Categorical draw (on ``x0``'s device); the global RNG when None.

    Returns:
        ``(eps_target, source_index)``: the new target ``[B, ...]`` (no gradient, dtype of
        ``noise``) and ``source_index[i]``, the ``j`` used for row ``i`` (``i`` when not moved).
    """
    if mode not in MODES:
        raise CbdmError(f"t2h mode must be one of {', '.join(MODES)}, got {mode!r}")
    with torch.no_grad():
        b = x0.shape[0]
        t = t.to(x0.device).long()
        w = transfer_weights(x0, t, noise, schedule)
        j = torch.multinomial(w.float(), 1, generator=generator).squeeze(1)
        own = torch.arange(b, device=x0.device)
        freq = torch.as_tensor(class_freq, device=x0.device, dtype=torch.float64)
        p = freq[y.to(x0.device).long()]
        if mode == "t2h":
            allowed = p[j] >= p
        elif mode == "h2t":
            allowed = p[j] <= p
        else:
            allowed = torch.ones_like(j, dtype=torch.bool)
        if cut_time is not None:
            allowed &= t < cut_time
        j = torch.where(allowed, j, own)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        ab = schedule.alphas_cumprod.to(x0.device, torch.float64)[t].view(shape)
        x_t = ab.sqrt() * x0.double() + (1 - ab).sqrt() * noise.double()
        target = (x_t - ab.sqrt() * x0.double()[j]) / (1 - ab).sqrt()
        return target.to(noise.dtype), j


class T2HMethod(TrainingMethod):
    """Replaces the epsilon target by :func:`t2h_targets`; logs the fraction of moved rows."""

    name = "t2h"

    def __init__(self, class_counts: torch.Tensor, mode: str = "t2h", cut_time: Optional[int] = None):
        self.class_counts = torch.as_tensor(class_counts, dtype=torch.float64)
        self.mode = mode
        self.cut_time = cut_time
        self._moved: Optional[torch.Tensor] = None

    def target(self, ctx: StepContext) -> Optional[torch.Tensor]:
        if ctx.prediction != "eps":
            raise CbdmError("method t2h replaces an epsilon target; it needs the ddpm loss "
                            "(objective.loss), not a loss that predicts something else")
        target, j = t2h_targets(ctx.x0, ctx.y, ctx.t, ctx.noise, ctx.schedule, self.class_counts,
                                mode=self.mode, cut_time=self.cut_time)
        # Called on the global batch (see the module docstring): the logged share is the global one.
        self._moved = (j != torch.arange(j.shape[0], device=j.device)).float()
        return target

    def loss(self, ctx: StepContext, out: PassOutputs) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        zero = out.pred.new_zeros(())
        moved = zero if self._moved is None else self._moved.mean().to(zero)
        return {"t2h_moved": moved}, zero


def build_t2h(options: T2HOptions, ctx: MethodBuildContext) -> T2HMethod:
    """Factory of the ``t2h`` method."""
    if options.cut_time is not None and options.cut_time > ctx.schedule.num_timesteps:
        raise CbdmError(f"t2h cut_time={options.cut_time} exceeds the {ctx.schedule.num_timesteps} timesteps")
    return T2HMethod(ctx.class_counts, mode=options.mode, cut_time=options.cut_time)
