"""DiffROP (Yan, Qi, Hu, Yang, Tang, arXiv 2402.10821): a hinge on the KL divergence between
the reverse kernels of the true class and a contrasting class. From the paper; no released code.

Two forms (option ``form``): ``kl-hinge`` (the default, below) and ``released``, the inverse
distance between the predictions of different rows that CCUA's released SiT code uses as its
DiffROP baseline (cbdm_core/methods/diffrop_released.py). Neither is DiffROP's own code.

**Reconstructed.** The paper's text past its abstract could not be read here (its repository
holds only figure scripts). What is known from the abstract and summaries: the penalty is on
``D_KL[p_theta(x_{t-1} | x_t, c^i) || p_theta(x_{t-1} | x_t, c^j)]`` for the true class ``c^i``
and another class ``c^j``, with a time-dependent weight and a hinge-like margin, added to the
diffusion loss. The rest is derived here (docs/methods.md, "DiffROP"):

With DDPM's fixed variance ``sigma_t^2 = beta_t`` and the eps parameterisation
``mu = (x_t - beta_t / sqrt(1 - ab_t) eps) / sqrt(alpha_t)``, the two kernels differ only in
their means, and per dimension

    KL_t = c_t * mean_pixels (eps(x_t, y) - eps(x_t, y'))^2,   c_t = beta_t / (2 alpha_t (1 - ab_t))

(the Gaussian KL ``||mu_i - mu_j||^2 / (2 sigma_t^2)``, divided by the number of dimensions so
the margin does not depend on the image size). The overlap penalty pushes the kernels apart up
to a margin ``m``, weighted towards low noise:

    L = L_diffusion + lambda * mean_rows[ keep * w(t) * max(0, m - KL_t) ],   w(t) = (1 - t / T)^p

``y'`` is drawn from a label distribution restricted to classes other than ``y``; rows whose label
was dropped get weight 0. Both predictions carry gradients (both kernels are the model's).
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import CbdmError
from .base import MethodBuildContext, MethodSpec, PassOutputs, StepContext, TrainingMethod
from .diffrop_released import permutation_from_keys, released_overlap

NOTE = "from the paper; no released code"
RELEASED_SOURCE = ("C-Fun/Contrastive-Conditional-Unconditional-Alignment-for-Long-tailed-Diffusion-Model"
                   "@baff9def6cfd553d4452d10eab0bac66ec2727aa:CCUA-SiT/SiT/transport/transport.py:171-180")
#: lambda when ``weight`` is not given: ours for kl-hinge; the released ``--diffrop`` default (train.py:374).
DEFAULT_WEIGHT = {"kl-hinge": 0.01, "released": 0.1}
#: options of the kl-hinge form that the released form has no use for (refused there unless at default).
KL_HINGE_ONLY = ("margin", "kl_coefficient", "y_dist", "set_size")


class DiffROPOptions(BaseModel):
    """Options of the ``diffrop`` method (reconstructed: the paper's values could not be read).

    Args:
        form: ``kl-hinge``: our reconstruction from the abstract, a hinge on the KL of one x_t's
            reverse kernels under y and y'; ``released``: ``1 / (1 + d)``, d the t-weighted mean
            squared distance between the predictions of rows paired by a random permutation
            (pairs of one class masked), as in CCUA's released SiT code (a baseline there, not
            DiffROP's own release).
        weight: lambda, the weight of the overlap term; unset: 0.01 for kl-hinge (ours), 0.1 for
            released (the released default).
        margin: m, the hinge margin on the per-dimension KL (no penalty once KL >= m).
        time_power: p of the time weight ``(1 - t / T)^p``; 0 weighs every t alike (released:
            1, SiT's weight t with data at t = 1).
        kl_coefficient: ``kl``: the exact Gaussian KL coefficient ``beta_t / (2 alpha_t (1 - ab_t))``;
            ``none``: the plain squared distance of the noise predictions (as DDPM's L_simple
            drops the same factor).
        y_dist: label distribution the contrasting class is drawn from (excluding the true class).
        set_size: contrasting classes per row (each one more view of the batch in the shared pass).
    """

    model_config = ConfigDict(extra="forbid")

    form: Literal["kl-hinge", "released"] = "kl-hinge"
    weight: Optional[float] = Field(None, ge=0)
    margin: float = Field(1.0, ge=0)
    time_power: float = Field(1.0, ge=0)
    kl_coefficient: Literal["kl", "none"] = "kl"
    y_dist: str = "bal"
    set_size: int = Field(1, ge=1, le=64)

    @model_validator(mode="after")
    def _released_has_no_hinge(self) -> "DiffROPOptions":
        """Refuse kl-hinge settings under ``form: released``, which would silently ignore them."""
        if self.form == "released":
            moved = [k for k in KL_HINGE_ONLY if getattr(self, k) != type(self).model_fields[k].default]
            if moved:
                verb = "applies" if len(moved) == 1 else "apply"
                raise ValueError(f"{', '.join(moved)} {verb} only to form kl-hinge (form released has no margin, "
                                 "KL coefficient or drawn contrast class)")
        return self

    def resolved_weight(self) -> float:
        """lambda: ``weight``, or the form's default when unset."""
        return DEFAULT_WEIGHT[self.form] if self.weight is None else float(self.weight)


def kl_coefficients(schedule, t: torch.Tensor) -> torch.Tensor:
    """``c_t = beta_t / (2 alpha_t (1 - ab_t))`` per row (float32)."""
    beta = schedule.betas.to(t.device)[t].double()
    ab = schedule.alphas_cumprod.to(t.device)[t].double()
    return (beta / (2.0 * (1.0 - beta) * (1.0 - ab))).float()


def draw_contrast(probs: torch.Tensor, y: torch.Tensor, set_size: int) -> torch.Tensor:
    """Labels ``[S, B]``: per row, ``set_size`` draws from ``probs`` with the row's own class removed."""
    b, c = y.shape[0], probs.shape[0]
    weights = probs.to(y.device, torch.float32).expand(b, c).clone()
    weights[torch.arange(b, device=y.device), y.clamp(max=c - 1)] = 0.0
    empty = weights.sum(dim=1) <= 0
    if bool(empty.any()):  # only the true class has mass: fall back to uniform over the others
        weights[empty] = 1.0
        weights[empty, y[empty].clamp(max=c - 1)] = 0.0
    return torch.multinomial(weights, set_size, replacement=True).t().contiguous()


def overlap_penalty(eps_main: torch.Tensor, eps_contrast: torch.Tensor, coef: torch.Tensor,
                    time_weight: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(penalty [S, B], kl [S, B])``: ``w(t) * max(0, m - c_t * mean_pixels(eps - eps')^2)``."""
    d = (eps_main.unsqueeze(0) - eps_contrast).pow(2).flatten(2).mean(dim=2)  # [S, B]
    kl = coef.view(1, -1) * d
    return time_weight.view(1, -1) * torch.clamp(margin - kl, min=0.0), kl


class DiffROP(TrainingMethod):
    """The built ``diffrop`` method (see the module docstring)."""

    name = "diffrop"

    def __init__(self, options: DiffROPOptions, probs: torch.Tensor, num_timesteps: int):
        self.options = options
        self.probs = probs
        self.T = int(num_timesteps)
        self.weight = options.resolved_weight()
        self.keys: Optional[torch.Tensor] = None  # released form: this step's permutation keys
        self.last_permutation: Optional[torch.Tensor] = None  # released form: the pairing of the last loss

    def extra_labels(self, ctx: StepContext) -> Optional[torch.Tensor]:
        self.keys = None
        if self.weight == 0 or ctx.num_classes < 2:
            return None
        if self.options.form == "released":
            # Drawn here, with the step's other random numbers, on the global batch: no extra view.
            self.keys = torch.rand(ctx.y.shape[0], device=ctx.y.device)
            return None
        return draw_contrast(self.probs, ctx.y, self.options.set_size)

    def time_weight(self, t: torch.Tensor) -> torch.Tensor:
        """``(1 - t/T)^p`` per row (float32)."""
        return (1.0 - t.float() / self.T).clamp(min=0.0).pow(self.options.time_power)

    def loss(self, ctx: StepContext, out: PassOutputs) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if self.options.form == "released":
            return self.released_loss(ctx, out)
        if out.extra is None:
            zero = out.pred.new_zeros(())
            return {"diffrop": zero, "diffrop_kl": zero}, zero
        o = self.options
        coef = kl_coefficients(ctx.schedule, ctx.t) if o.kl_coefficient == "kl" else torch.ones_like(ctx.t).float()
        w = self.time_weight(ctx.t) * ctx.keep.float()
        penalty, kl = overlap_penalty(out.pred.float(), out.extra.float(), coef, w, o.margin)
        term = penalty.mean()
        kept = ctx.keep.float().sum().clamp(min=1.0)
        mean_kl = (kl * ctx.keep.float().view(1, -1)).sum() / (kept * kl.shape[0])
        return {"diffrop": term.detach(), "diffrop_kl": mean_kl.detach()}, self.weight * term

    def released_loss(self, ctx: StepContext, out: PassOutputs) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``lambda / (1 + d)`` over this process's rows (diffrop_released.py)."""
        if self.keys is None:
            zero = out.pred.new_zeros(())
            return {"diffrop": zero, "diffrop_dist": zero}, zero
        perm = permutation_from_keys(self.keys, out.pred.shape[0])
        self.last_permutation = perm
        term, dist = released_overlap(out.pred.float(), ctx.y, self.time_weight(ctx.t), perm)
        return {"diffrop": term.detach(), "diffrop_dist": dist.detach()}, self.weight * term


def build_diffrop(options: DiffROPOptions, ctx: MethodBuildContext) -> DiffROP:
    """Factory registered for ``diffrop`` (``options.y_dist`` resolved by the edge: ``ctx.probs``)."""
    T = getattr(ctx.schedule, "num_timesteps", None)
    if not isinstance(T, int) or T <= 0 or not hasattr(ctx.schedule, "betas"):
        raise CbdmError("diffrop needs a discrete noise schedule (betas) for its KL coefficient")
    if ctx.num_classes == 0:  # unconditional: no class to contrast with
        return DiffROP(options, torch.ones(0), T)
    probs = ctx.probs(options.y_dist)
    if probs.shape[0] != ctx.num_classes:
        raise CbdmError(f"class counts list {probs.shape[0]} classes, the model has {ctx.num_classes}")
    return DiffROP(options, probs, T)


DIFFROP_SPEC = MethodSpec(
    options_model=DiffROPOptions,
    build=build_diffrop,
    paper="Yan et al., Training Class-Imbalanced Diffusion Model Via Overlap Optimization (DiffROP), "
          f"arXiv 2402.10821; {NOTE}; form released: the DiffROP baseline of CCUA's SiT code, {RELEASED_SOURCE}",
    code="",
    sweepable=("weight", "margin", "time_power"),
    label_distribution_options=("y_dist",),  # an unregistered one: refused before data is loaded
)

__all__ = ["DEFAULT_WEIGHT", "DIFFROP_SPEC", "DiffROP", "DiffROPOptions", "build_diffrop", "draw_contrast",
           "kl_coefficients", "overlap_penalty"]
