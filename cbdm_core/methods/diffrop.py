"""DiffROP (Yan, Qi, Hu, Yang, Tang, arXiv 2402.10821): a hinge on the KL divergence between
the reverse kernels of the true class and a contrasting class. From the paper; no released code.

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
from pydantic import BaseModel, ConfigDict, Field

from ..errors import CbdmError
from .base import MethodBuildContext, MethodSpec, PassOutputs, StepContext, TrainingMethod

NOTE = "from the paper; no released code"


class DiffROPOptions(BaseModel):
    """Options of the ``diffrop`` method (reconstructed: the paper's values could not be read).

    Args:
        weight: lambda, the weight of the overlap penalty.
        margin: m, the hinge margin on the per-dimension KL (no penalty once KL >= m).
        time_power: p of the time weight ``(1 - t / T)^p``; 0 weighs every t alike.
        kl_coefficient: ``kl``: the exact Gaussian KL coefficient ``beta_t / (2 alpha_t (1 - ab_t))``;
            ``none``: the plain squared distance of the noise predictions (as DDPM's L_simple
            drops the same factor).
        y_dist: label distribution the contrasting class is drawn from (excluding the true class).
        set_size: contrasting classes per row (each one more view of the batch in the shared pass).
    """

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(0.01, ge=0)
    margin: float = Field(1.0, ge=0)
    time_power: float = Field(1.0, ge=0)
    kl_coefficient: Literal["kl", "none"] = "kl"
    y_dist: str = "bal"
    set_size: int = Field(1, ge=1, le=64)


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

    def extra_labels(self, ctx: StepContext) -> Optional[torch.Tensor]:
        if self.options.weight == 0 or ctx.num_classes < 2:
            return None
        return draw_contrast(self.probs, ctx.y, self.options.set_size)

    def loss(self, ctx: StepContext, out: PassOutputs) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if out.extra is None:
            zero = out.pred.new_zeros(())
            return {"diffrop": zero, "diffrop_kl": zero}, zero
        o = self.options
        coef = kl_coefficients(ctx.schedule, ctx.t) if o.kl_coefficient == "kl" else torch.ones_like(ctx.t).float()
        w = (1.0 - ctx.t.float() / self.T).clamp(min=0.0).pow(o.time_power) * ctx.keep.float()
        penalty, kl = overlap_penalty(out.pred.float(), out.extra.float(), coef, w, o.margin)
        term = penalty.mean()
        kept = ctx.keep.float().sum().clamp(min=1.0)
        mean_kl = (kl * ctx.keep.float().view(1, -1)).sum() / (kept * kl.shape[0])
        return {"diffrop": term.detach(), "diffrop_kl": mean_kl.detach()}, o.weight * term


def check_diffrop_options(options: DiffROPOptions) -> None:
    """Fail fast on a contrast distribution nobody registered."""
    from ..registry import get_registry

    get_registry().get("label_distribution", options.y_dist)


def build_diffrop(options: DiffROPOptions, ctx: MethodBuildContext) -> DiffROP:
    """Factory registered for ``diffrop``."""
    from ..label_distributions import resolve_label_distribution

    T = getattr(ctx.schedule, "num_timesteps", None)
    if not isinstance(T, int) or T <= 0 or not hasattr(ctx.schedule, "betas"):
        raise CbdmError("diffrop needs a discrete noise schedule (betas) for its KL coefficient")
    if ctx.num_classes == 0:  # unconditional: no class to contrast with
        return DiffROP(options, torch.ones(0), T)
    probs = resolve_label_distribution(options.y_dist, ctx.class_counts)
    if probs.shape[0] != ctx.num_classes:
        raise CbdmError(f"class counts list {probs.shape[0]} classes, the model has {ctx.num_classes}")
    return DiffROP(options, probs, T)


DIFFROP_SPEC = MethodSpec(
    options_model=DiffROPOptions,
    build=build_diffrop,
    paper="Yan et al., Training Class-Imbalanced Diffusion Model Via Overlap Optimization (DiffROP), "
          f"arXiv 2402.10821; {NOTE}",
    code="",
    sweepable=("weight", "margin", "time_power"),
    check=check_diffrop_options,
)

__all__ = ["DIFFROP_SPEC", "DiffROP", "DiffROPOptions", "build_diffrop", "draw_contrast", "kl_coefficients",
           "overlap_penalty"]
