"""CCUA, Contrastive Conditional-Unconditional Alignment (Chen, Villa, Liang, Lu, Tang;
arXiv 2507.09052 v2; v1: "Can Contrastive Learning Improve Class-Imbalanced Diffusion Model?").

    L = L_diffusion + alpha * L_ucl + gamma * L_al                       (the paper's Eq. 7)

Sources: the paper's abstract, public reviews of its v2 (human ones quote Eq. 7, the linear
``t/T`` weight of L_al and the appendix note on weighting L_ucl by ``t/T``; automated ones add
``h_pos = h_anc``) and the authors' released code (github.com/C-Fun/Contrastive-Conditional-
Unconditional-Alignment-for-Long-tailed-Diffusion-Model; U-Net pipeline
``CCUA-DDPM/DDPM/diffusion.py`` and ``clr.py``).
The method section's own text could not be read here; the equations below follow the released
U-Net code, which the reviews' description matches.

One extra view of the batch under the null label gives ``eps(x_t, null)`` and, through the
backbone's feature tap, the unconditional feature ``h_i = e(x_t,i; null)`` (U-Net: the map after
the middle blocks, flattened, not pooled: the released ``return_mid``).

* L_ucl, InfoNCE with the anchor as its own positive and the batch's other rows as negatives
  (cosine similarity, temperature tau; the released ``info_nce`` call):

      l_i = -log( exp(1/tau) / sum_j exp(cos(h_i, h_j) / tau) ),   L_ucl = mean_i w_u(t_i) l_i

  i.e. ``cross_entropy(S / tau, arange(B))`` with ``S`` the cosine matrix; only the negatives
  carry a gradient (the positive logit is the constant 1).
* L_al, the MSE between the conditional and the unconditional prediction, towards high noise:

      L_al = mean_{i, pixels} keep_i * w_a(t_i) * (eps(x_t, y) - eps(x_t, null))^2

  Both predictions carry gradients (the released code detaches neither); ``al_stop_gradient``
  can detach one side. Rows whose label was dropped get weight 0 (the released code skips
  L_al on the steps whose whole batch was dropped).

``w(t) = (t / T)^p * [t >= t_min]``: ``p = 1``, ``t_min = 0`` is the released weight ``t/T``.
Batch resampling is a data-sampler setting (``data.resample``), not part of this method: see
docs/methods.md, "CCUA".
"""

from __future__ import annotations

import weakref
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..errors import CbdmError
from ..interfaces import HasFeatureTap
from .base import MethodBuildContext, MethodSpec, PassOutputs, StepContext, TrainingMethod
from .dispersive import FeatureCapture, disarm_capture, install_capture, live_captures

TAP_ATTR = "ccua_tap"
CODE = "https://github.com/C-Fun/Contrastive-Conditional-Unconditional-Alignment-for-Long-tailed-Diffusion-Model"


class CCUAOptions(BaseModel):
    """Options of the ``ccua`` method (defaults: the released U-Net code; see docs/methods.md).

    Args:
        alpha: weight of L_ucl (1.0: the released U-Net script; its SiT/ImageNet-LT script uses 0.05).
        gamma: weight of L_al (1.0: the released U-Net script; its SiT/ImageNet-LT script uses 0.05).
        temperature: tau of the InfoNCE logits (0.1: the default of the info_nce package the
            released code calls; the paper's value could not be read).
        ucl_time_power: p of L_ucl's row weight ``(t / T)^p`` (1: the released U-Net code; 0: no
            weight, the paper's main text, whose appendix weights it by t/T on some datasets).
        al_time_power: p of L_al's row weight ``(t / T)^p`` (1: the paper and the released code).
        al_min_t: L_al only on rows with ``t >= al_min_t`` (our choice, a step form of "large
            timesteps"; 0: every row, as released).
        al_stop_gradient: ``none`` (released: both predictions get L_al's gradient), ``uncond``
            (only the conditional prediction moves) or ``cond`` (only the unconditional one).
    """

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(1.0, ge=0)
    gamma: float = Field(1.0, ge=0)
    temperature: float = Field(0.1, gt=0)
    ucl_time_power: float = Field(1.0, ge=0)
    al_time_power: float = Field(1.0, ge=0)
    al_min_t: int = Field(0, ge=0)
    al_stop_gradient: Literal["none", "uncond", "cond"] = "none"


def time_weight(t: torch.Tensor, T: int, power: float, min_t: int = 0) -> torch.Tensor:
    """``(t / T)^power * [t >= min_t]`` per row (float32; ``power = 0`` gives 1 at every t)."""
    w = (t.float() / T).pow(power)
    return w * (t >= min_t).float()


def ucl_rows(h: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row InfoNCE ``[B]`` of ``h [B, ...]``: anchor = positive = ``h_i``, negatives ``h_j, j != i``."""
    z = F.normalize(h.flatten(1).float(), dim=1)
    logits = z @ z.t() / temperature  # row i: its own positive on the diagonal, negatives elsewhere
    return F.cross_entropy(logits, torch.arange(z.shape[0], device=z.device), reduction="none")


def alignment_rows(eps_cond: torch.Tensor, eps_unc: torch.Tensor, stop: str = "none") -> torch.Tensor:
    """Per-row ``mean_pixels (eps_cond - eps_unc)^2`` ``[B]``, with the side named by ``stop`` detached."""
    if stop == "uncond":
        eps_unc = eps_unc.detach()
    elif stop == "cond":
        eps_cond = eps_cond.detach()
    return (eps_cond.float() - eps_unc.float()).pow(2).flatten(1).mean(dim=1)


class CCUA(TrainingMethod):
    """The built ``ccua`` method (see the module docstring)."""

    name = "ccua"

    def __init__(self, options: CCUAOptions, num_timesteps: int):
        self.options = options
        self.T = int(num_timesteps)
        self._captures: list[weakref.ref] = []
        self._rows: Optional[slice] = None

    @property
    def active(self) -> bool:
        return self.options.alpha > 0 or self.options.gamma > 0

    def _live(self) -> list[FeatureCapture]:
        return live_captures(self._captures)

    def attach(self, model: nn.Module) -> None:
        if self.options.alpha == 0:  # no contrastive term: no feature to read
            return
        self._captures.append(weakref.ref(install_capture(model, TAP_ATTR)))

    def for_sampling(self, model: nn.Module) -> None:
        disarm_capture(model, TAP_ATTR)

    def extra_labels(self, ctx: StepContext) -> Optional[torch.Tensor]:
        if not self.active:
            return None
        return torch.full_like(ctx.y, ctx.num_classes)[None]  # one view under the null label

    def begin_pass(self, rows: slice, total: int) -> None:
        self._rows = rows
        for c in self._live():
            c.armed, c.captured = rows.stop > rows.start, None

    def end_pass(self) -> None:
        for c in self._live():
            c.armed = False

    def _unconditional_feature(self) -> torch.Tensor:
        captured = [c for c in self._live() if c.captured is not None]
        if len(captured) != 1 or self._rows is None:
            raise CbdmError("ccua read no feature from the shared pass "
                            "(the objective must call begin_pass before it and end_pass after)")
        feature, captured[0].captured = captured[0].captured, None  # drop the graph reference early
        return feature[self._rows]

    def loss(self, ctx: StepContext, out: PassOutputs) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        zero = out.pred.new_zeros(())
        if out.extra is None:
            return {"ccua_ucl": zero, "ccua_al": zero}, zero
        o = self.options
        ucl = zero
        if o.alpha > 0:
            h = self._unconditional_feature()
            with torch.autocast(device_type=h.device.type, enabled=False):
                ucl = (time_weight(ctx.t, self.T, o.ucl_time_power) * ucl_rows(h, o.temperature)).mean()
        w = time_weight(ctx.t, self.T, o.al_time_power, o.al_min_t) * ctx.keep.float()
        al = (w * alignment_rows(out.pred, out.extra[0], o.al_stop_gradient)).mean()
        return {"ccua_ucl": ucl.detach(), "ccua_al": al.detach()}, o.alpha * ucl + o.gamma * al


def build_ccua(options: CCUAOptions, ctx: MethodBuildContext) -> CCUA:
    """Factory registered for ``ccua``."""
    T = getattr(ctx.schedule, "num_timesteps", None)
    if not isinstance(T, int) or T <= 0:
        raise CbdmError("ccua needs a discrete noise schedule (num_timesteps) for its weight t/T")
    if ctx.num_classes == 0:
        raise CbdmError("ccua aligns the class-conditional with the unconditional prediction; "
                        "this model has no classes")
    return CCUA(options, T)


CCUA_SPEC = MethodSpec(
    options_model=CCUAOptions,
    build=build_ccua,
    paper="Chen et al., Contrastive Conditional-Unconditional Alignment for Long-tailed Diffusion Model (CCUA), "
          "arXiv 2507.09052 v2; from the released code and the paper's abstract and reviews",
    code=CODE,
    sweepable=("alpha", "gamma", "temperature"),
    requires=(HasFeatureTap,),  # checked when the model is built (build.check_capabilities)
)

__all__ = ["CCUA", "CCUAOptions", "CCUA_SPEC", "alignment_rows", "build_ccua", "time_weight", "ucl_rows"]
