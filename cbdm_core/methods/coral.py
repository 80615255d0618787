"""CORAL (Rodriguez et al., NeurIPS 2025): a supervised contrastive term on the
backbone's bottleneck, weighted towards low noise.

    L = L_diffusion + lambda * s(t) * SupCon_{tau_sc}(z, y),
    z = normalize(W pool(h_mid) + b),   s(t) = mean_i exp((1 - t_i / T) / tau_r)

``h_mid`` is the backbone's feature tap (U-Net: after the middle blocks; ViT: the token
mean after block ``depth // 2``; EDM: its inner network's tap), read by a forward hook
during the objective's shared forward pass (no extra pass), on the main rows ``[0, B)``.
SupCon runs over the rows whose label was kept (:mod:`.supcon`). The projection head is
a submodule of the backbone (``coral_head``), so it is saved with the run; it is used only
in training: at sampling the hook does nothing and the output is the backbone's own.
"""

from __future__ import annotations

import weakref
from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..errors import CbdmError
from ..interfaces import HasFeatureTap
from .base import MethodBuildContext, MethodSpec, PassOutputs, StepContext, TrainingMethod
from .supcon import supcon_loss

HEAD_ATTR = "coral_head"


class CoralOptions(BaseModel):
    """Options of the ``coral`` method.

    Args:
        weight: lambda, the weight of the contrastive term (0.01 in all the paper's runs).
        tau_sc: SupCon temperature (paper: 0.12 CIFAR-10-LT IF100, 0.10 IF1000, 0.09 CIFAR-100-LT).
        tau_r: temperature of the noise-level weight ``s(t)`` (0.8 or 1.0 in the paper).
        proj_dim: output size of the projection head (128 in the paper and code).
        extra_tau_factor: multiply the term by ``tau_sc`` once more. The released code does
            this at the optimiser step (``loss_ddpm + loss_supcon * supcon_temp``), so its
            effective weight is ``lambda * tau_sc * s(t)``; the published numbers come from
            that code, hence on in the presets. Off: the paper's equation.
    """

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(0.01, ge=0)
    tau_sc: float = Field(0.1, gt=0)
    tau_r: float = Field(1.0, gt=0)
    proj_dim: int = Field(128, gt=0)
    extra_tau_factor: bool = False


class ProjectionHead(nn.Module):
    """``Linear(C_mid -> proj_dim)``; as a forward hook on the tap it keeps the pooled feature
    of the one pass it is armed for (the objective's shared pass)."""

    def __init__(self, in_dim: int, out_dim: int, pool):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.pool = pool
        self.armed = False
        self.captured: Optional[torch.Tensor] = None

    def hook(self, module: nn.Module, args, output: torch.Tensor) -> None:
        # A bound method of this module: a deep copy of the backbone (the EMA) gets a hook on its own copy.
        if self.armed:
            self.captured = self.pool(output)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(feature.to(self.proj.weight.dtype)).float(), p=2, dim=1)


def noise_weight(t: torch.Tensor, T: int, tau_r: float) -> torch.Tensor:
    """``s(t) = mean_i exp((1 - t_i / T) / tau_r)`` (largest at low noise)."""
    return torch.exp((1.0 - t.float() / T) / tau_r).mean()


class Coral(TrainingMethod):
    """The built ``coral`` method (see the module docstring)."""

    name = "coral"

    def __init__(self, options: CoralOptions, num_timesteps: int):
        self.options = options
        self.T = int(num_timesteps)
        self._heads: list[weakref.ref] = []

    def _live_heads(self) -> list[ProjectionHead]:
        heads = [r() for r in self._heads]
        return [h for h in heads if h is not None]

    def attach(self, model: nn.Module) -> None:
        head = getattr(model, HEAD_ATTR, None)
        if head is None:
            tap = model.feature_tap()
            head = ProjectionHead(tap.dim, self.options.proj_dim, tap.pool)
            tap.module.register_forward_hook(head.hook)
            model.add_module(HEAD_ATTR, head)
        # Already attached (e.g. a deep copy of an attached model): reuse it, hook included.
        self._heads.append(weakref.ref(head))

    def for_sampling(self, model: nn.Module) -> None:
        head = getattr(model, HEAD_ATTR, None)
        if head is not None:  # the hook stays registered but never captures
            head.armed = False
            head.captured = None

    def begin_pass(self, rows: slice, total: int) -> None:
        for head in self._live_heads():
            head.armed, head.captured = True, None

    def end_pass(self) -> None:
        for head in self._live_heads():
            head.armed = False

    def loss(self, ctx: StepContext, out: PassOutputs) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        captured = [h for h in self._live_heads() if h.captured is not None]
        if len(captured) != 1:
            raise CbdmError("coral read no bottleneck feature from the shared pass "
                            "(the objective must call begin_pass before it and end_pass after)")
        head = captured[0]
        feature, head.captured = head.captured, None  # drop the graph reference early
        b = ctx.y.shape[0]
        o = self.options
        # SupCon in float32 even under autocast (as the released code normalises in fp32).
        with torch.autocast(device_type=feature.device.type, enabled=False):
            z = head(feature[:b].float())
            con = supcon_loss(z[ctx.keep], ctx.y[ctx.keep], o.tau_sc)
            s = noise_weight(ctx.t, self.T, o.tau_r)
            scale = o.weight * (o.tau_sc if o.extra_tau_factor else 1.0)
            contribution = scale * s * con
        return {"supcon": con.detach(), "coral_s": s.detach(), "coral": contribution.detach()}, contribution


def build_coral(options: CoralOptions, ctx: MethodBuildContext) -> Coral:
    """Factory registered for ``coral``."""
    T = getattr(ctx.schedule, "num_timesteps", None)
    if not isinstance(T, int) or T <= 0:
        raise CbdmError("coral needs a discrete noise schedule (num_timesteps) for its weight s(t)")
    return Coral(options, T)


CORAL_SPEC = MethodSpec(
    options_model=CoralOptions,
    build=build_coral,
    paper="Rodriguez et al., CORAL: Disentangling Latent Representations in Long-Tailed Diffusion, NeurIPS 2025",
    code="https://github.com/SankarLab/coral-lt-diffusion",
    sweepable=("weight", "tau_sc", "tau_r"),
    requires=(HasFeatureTap,),  # checked when the model is built (build.check_capabilities)
)

__all__ = ["CORAL_SPEC", "Coral", "CoralOptions", "ProjectionHead", "build_coral", "noise_weight"]
