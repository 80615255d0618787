"""Method ``cbdm``: the CBDM distribution-adjustment regulariser (Qin et al., CVPR 2023, Eq. 4).

For a noisy ``x_t`` with label ``y`` and ``y'`` drawn from a target label distribution:

    reg  = tau * t * || eps(x_t, y) - sg(eps(x_t, y')) ||^2
    com  = tau * t * || sg(eps(x_t, y)) - eps(x_t, y') ||^2
    loss contribution = reg + gamma * com

averaged over the Monte-Carlo set of ``y'`` and over all elements; rows whose
label was dropped (classifier-free training) get weight 0. ``t`` is the integer
timestep the network receives (0..T-1). The reference code writes the weight as
``tau_ref * t / T``; with T = 1000 its tau_ref = 1 equals tau = 0.001 here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import CbdmError
from .base import MethodBuildContext, PassOutputs, StepContext, TrainingMethod

PAPER = "Qin et al., Class-Balancing Diffusion Models, CVPR 2023"
CODE = "https://github.com/qym7/CBDM-pytorch"


class CBDMOptions(BaseModel):
    """Options of the CBDM regulariser.

    Args:
        tau: weight per timestep (the loss weight is ``tau * t``); 0 disables CBDM.
        gamma: weight of the commitment term.
        y_dist: target label distribution name (``train``, ``bal``, ``sqrt``, ``pow:q``).
        set_size: Monte-Carlo set size |Y| of y' per sample.
    """

    model_config = ConfigDict(extra="forbid")

    tau: float = Field(0.001, ge=0.0)
    gamma: float = Field(0.25, ge=0.0)
    y_dist: str = "train"  # the reference code draws y' from the training frequencies from scratch
    # Each element of the set is one more prediction for the whole batch (and b * set_size
    # labels drawn); beyond this it is an allocation error, not a regulariser.
    set_size: int = Field(1, ge=1, le=64)


@dataclass
class CBDMRegularizer(TrainingMethod):
    """CBDM regulariser over a fixed target distribution ``probs`` of shape ``[C]``.

    A :class:`~cbdm_core.methods.base.TrainingMethod`: it asks for ``set_size`` extra
    predictions under y' in the shared pass and adds ``regularizer + gamma * commitment``.
    """

    probs: torch.Tensor
    tau: float = 0.001
    gamma: float = 0.25
    set_size: int = 1
    y_prime: Optional[torch.Tensor] = None  # fixed y' (tests, custom loops)
    name: str = "cbdm"

    def extra_labels(self, ctx: StepContext) -> Optional[torch.Tensor]:
        if self.tau == 0 and self.y_prime is None:
            return None
        b = ctx.t.shape[0]
        if self.y_prime is not None:
            yp = self.y_prime.to(ctx.t.device).long()
            if yp.ndim not in (1, 2) or yp.shape[-1] != b or yp.numel() == 0:
                raise CbdmError(f"y_prime has shape {tuple(self.y_prime.shape)}, expected [{b}] or [S, {b}]")
            yp = yp.view(1, b) if yp.ndim == 1 else yp
            if bool(((yp < 0) | (yp >= ctx.num_classes)).any()):
                raise CbdmError(f"y_prime holds labels outside 0..{ctx.num_classes - 1}")
            return yp
        probs = self.probs.to(ctx.t.device, torch.float32)
        if probs.shape[0] != ctx.num_classes:
            raise CbdmError(f"label distribution has {probs.shape[0]} classes, the model {ctx.num_classes}")
        draws = torch.multinomial(probs, b * self.set_size, replacement=True)
        return draws.view(self.set_size, b)

    def extra_rows_read(self, ctx: StepContext, extra: torch.Tensor) -> Optional[torch.Tensor]:
        # The weight tau * t * keep is 0 on rows whose label was dropped and at t = 0.
        read = (ctx.keep & (ctx.t > 0)).unsqueeze(0).expand(extra.shape[0], -1)
        if ctx.repeatable:
            # y' = y with no random layer: eps(x_t, y') is the main row's prediction and both terms
            # are 0 with 0 gradient. Under dropout the two passes differ, and the term stays.
            read = read & (extra != ctx.y_in.unsqueeze(0))
        return read

    def loss(self, ctx: StepContext, out: PassOutputs) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        eps, eps_extra = out.pred, out.extra
        if eps_extra is None:
            zero = eps.new_zeros(())
            return {"regularizer": zero, "commitment": zero}, zero
        weight = (self.tau * ctx.t.float() * ctx.keep.float()).view(1, -1, *([1] * (eps.ndim - 1)))
        eps_main = eps.unsqueeze(0)
        # Mean over the S draws and all elements = (1/|Y|) * sum over y' of per-element means.
        reg = (weight * (eps_main - eps_extra.detach()).pow(2)).mean()
        com = (weight * (eps_main.detach() - eps_extra).pow(2)).mean()
        return {"regularizer": reg, "commitment": com}, reg + self.gamma * com


def build_cbdm_regularizer(options: CBDMOptions, ctx: MethodBuildContext) -> CBDMRegularizer:
    """Factory of the ``cbdm`` method (``options.y_dist`` resolved by the edge: ``ctx.probs``)."""
    if ctx.num_classes == 0:  # an unconditional model has no y' to draw: nothing to regularise
        return CBDMRegularizer(probs=torch.ones(0), tau=0.0, gamma=options.gamma, set_size=options.set_size)
    probs = ctx.probs(options.y_dist)
    if probs.shape[0] != ctx.num_classes:
        raise CbdmError(f"class counts list {probs.shape[0]} classes, the model has {ctx.num_classes}")
    return CBDMRegularizer(probs=probs, tau=options.tau, gamma=options.gamma, set_size=options.set_size)


def cbdm_loss(model, x0: torch.Tensor, y: torch.Tensor, schedule, *, tau: float = 0.001, gamma: float = 0.25,
              y_dist=None, num_classes: Optional[int] = None, p_uncond: float = 0.1, set_size: int = 1,
              t: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
              y_prime: Optional[torch.Tensor] = None, class_counts=None) -> dict[str, torch.Tensor]:
    """CBDM loss for one batch, for users with their own training loop.

    Args:
        model: denoiser, ``model(x_t, t, y) -> eps``; index ``num_classes`` is the null label.
        x0: clean images in [-1, 1], ``[B, C, H, W]``.
        y: labels ``[B]``; entries equal to ``num_classes`` count as already dropped.
        schedule: a :class:`~cbdm_core.schedules.NoiseSchedule`.
        tau, gamma: CBDM weights (tau=0 gives the plain conditional DDPM loss).
        y_dist: target distribution of y': None or ``"bal"`` (uniform), a probability
            tensor ``[C]``, or a registered name (``"train"``, ``"sqrt"``, ``"pow:q"``) together
            with ``class_counts``.
        num_classes: defaults to ``model.num_classes``.
        p_uncond: per-sample label-dropout probability (dropped rows get no regulariser).
        set_size: Monte-Carlo set size |Y|.
        t, noise, y_prime: fix the timesteps ``[B]``, noise, or y' (``[B]`` or ``[S, B]``).

    Returns:
        ``{"diffusion", "regularizer", "commitment", "total"}``, each a scalar mean over
        all elements; ``total = diffusion + regularizer + gamma * commitment``.
    """
    from ..label_distributions import resolve_label_distribution
    from ..objectives import DiffusionObjective

    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
        if num_classes is None:
            raise CbdmError("cbdm_loss needs num_classes (the model has no num_classes attribute)")
    _check_loss_arguments(x0, y, num_classes, schedule, tau=tau, gamma=gamma, p_uncond=p_uncond,
                          set_size=set_size, t=t, noise=noise)
    if y_dist is None or (isinstance(y_dist, str) and y_dist in ("bal", "uniform")):
        probs = torch.full((num_classes,), 1.0 / num_classes)
    elif isinstance(y_dist, str):
        if class_counts is None:
            raise CbdmError(f"y_dist={y_dist!r} needs class_counts (or pass the probabilities as a tensor)")
        probs = resolve_label_distribution(y_dist, torch.as_tensor(class_counts))
    else:
        probs = torch.as_tensor(y_dist, dtype=torch.float32)
        if probs.ndim != 1 or probs.shape[0] != num_classes or bool((probs < 0).any()) or not bool(probs.sum() > 0):
            raise CbdmError(f"y_dist must be {num_classes} non-negative probabilities")
        probs = probs / probs.sum()
    if y_prime is not None:
        set_size = 1 if y_prime.ndim == 1 else y_prime.shape[0]
    reg = CBDMRegularizer(probs=probs, tau=tau, gamma=gamma, set_size=set_size, y_prime=y_prime)
    objective = DiffusionObjective(schedule, num_classes, [reg], p_uncond=p_uncond)
    keep = objective.sample_keep_mask(x0.shape[0], x0.device) & (y != num_classes)
    out = objective(model, x0, y, t=t, noise=noise, keep=keep).as_dict()
    out.setdefault("regularizer", out["diffusion"].new_zeros(()))
    out.setdefault("commitment", out["diffusion"].new_zeros(()))
    return out


def _check_loss_arguments(x0: torch.Tensor, y: torch.Tensor, num_classes: int, schedule, *, tau: float,
                          gamma: float, p_uncond: float, set_size: int, t: Optional[torch.Tensor],
                          noise: Optional[torch.Tensor]) -> None:
    """:func:`cbdm_loss`'s arguments, each refused in one line (they surfaced as a negative total, an
    ``IndexError`` in the user's embedding, or torch's own shape errors)."""
    for name, value in (("tau", tau), ("gamma", gamma)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise CbdmError(f"{name} must be a finite number >= 0, got {value!r}")
    if not (isinstance(p_uncond, (int, float)) and 0.0 <= p_uncond <= 1.0):
        raise CbdmError(f"p_uncond must be in [0, 1], got {p_uncond!r}")
    if isinstance(set_size, bool) or not isinstance(set_size, int) or set_size < 1:
        raise CbdmError(f"set_size must be an integer >= 1, got {set_size!r}")
    if not isinstance(x0, torch.Tensor) or x0.ndim < 2 or not x0.is_floating_point():
        raise CbdmError("x0 must be a float tensor [B, C, ...]")
    b = x0.shape[0]
    if not isinstance(y, torch.Tensor) or y.shape != (b,) or y.is_floating_point() or y.dtype == torch.bool:
        raise CbdmError(f"y must be integer labels of shape [{b}]")
    if b and (int(y.min()) < 0 or int(y.max()) > num_classes):
        raise CbdmError(f"y holds labels outside 0..{num_classes} ({num_classes} = the null label)")
    if t is not None:
        if not isinstance(t, torch.Tensor) or t.shape != (b,) or t.is_floating_point() or t.dtype == torch.bool:
            raise CbdmError(f"t must be integer timesteps of shape [{b}]")
        if b and (int(t.min()) < 0 or int(t.max()) >= schedule.num_timesteps):
            raise CbdmError(f"t holds timesteps outside 0..{schedule.num_timesteps - 1}")
    if noise is not None and (not isinstance(noise, torch.Tensor) or noise.shape != x0.shape):
        raise CbdmError(f"noise must have x0's shape {tuple(x0.shape)}")
