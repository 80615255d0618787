"""Dispersive Loss (Wang & He, "Diffuse and Disperse: Image Generation with Representation
Regularization", arXiv 2506.09027): the repulsive half of InfoNCE on an intermediate feature,
with no positive pairs. Its default variant, InfoNCE with the squared L2 distance:

    L = L_diffusion + lambda * L_disp,   L_disp = log mean_{i,j} exp(-D(z_i, z_j) / tau)

over the batch's rows ``i, j`` (the pair ``i = j`` included, D = 0 there: the released code
builds the full ``B x B`` matrix to match its JAX version), ``z_i`` the flattened feature of row
``i`` and ``D(z_i, z_j) = ||z_i - z_j||^2 / dim(z)`` (the released code divides the squared
distance by the feature size). The feature is the backbone's tap (U-Net: the map after the
middle blocks; ViT: the tokens after block ``depth // 2``), read by a forward hook during the
objective's shared pass on the main rows ``[0, B)``, flattened, not pooled (as released). No
parameters: nothing is added to checkpoints, nothing changes at sampling.
"""

from __future__ import annotations

import math
import weakref
from typing import Optional

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..errors import CbdmError
from ..interfaces import HasFeatureTap
from .base import MethodBuildContext, MethodSpec, PassOutputs, StepContext, TrainingMethod

TAP_ATTR = "dispersive_tap"


class DispersiveOptions(BaseModel):
    """Options of the ``dispersive`` method.

    Args:
        weight: lambda, the weight of the dispersive term.
        tau: temperature of the InfoNCE-L2 variant.
        until_step: apply the term only on training steps ``< until_step`` (0-based) and log its
            value, unweighted and without gradient, after that; None: on every step. An ablation
            switch, not the paper's: outside a training loop (no step known) the term applies.
    """

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(0.5, ge=0)
    tau: float = Field(0.5, gt=0)
    until_step: Optional[int] = Field(None, ge=0)


def dispersive_loss(z: torch.Tensor, tau: float) -> torch.Tensor:
    """``log mean_{i,j} exp(-||z_i - z_j||^2 / (dim * tau))`` over all ``B x B`` pairs of ``z [B, ...]``."""
    flat = z.flatten(1).float()
    n, dim = flat.shape
    sq = flat.pow(2).sum(dim=1)
    # Gram form (one matmul); clamped since rounding can make a tiny distance negative.
    dist = (sq[:, None] + sq[None, :] - 2.0 * flat @ flat.t()).clamp(min=0.0) / dim
    return torch.logsumexp(-dist.flatten() / tau, dim=0) - math.log(n * n)


class FeatureCapture(nn.Module):
    """Keeps the tap's raw output of the one pass it is armed for (no parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.captured: Optional[torch.Tensor] = None

    def hook(self, module: nn.Module, args, output: torch.Tensor) -> None:
        # A bound method of this module: a deep copy of the backbone (the EMA) hooks its own copy.
        if self.armed:
            self.captured = output


def install_capture(model: nn.Module, attr: str) -> FeatureCapture:
    """The model's :class:`FeatureCapture` under ``attr``, hooked on its feature tap once
    (a method attached twice, or to the EMA copy that already holds one, reuses it)."""
    capture = getattr(model, attr, None)
    if capture is None:  # the feature tap is a declared capability (MethodSpec.requires)
        capture = FeatureCapture()
        model.feature_tap().module.register_forward_hook(capture.hook)
        model.add_module(attr, capture)
    return capture


def disarm_capture(model: nn.Module, attr: str) -> None:
    """Stop the model's capture under ``attr`` (if any) from keeping features while sampling."""
    capture = getattr(model, attr, None)
    if capture is not None:
        capture.armed, capture.captured = False, None


def live_captures(refs: list[weakref.ref]) -> list[FeatureCapture]:
    """The captures still alive among weak references (a dropped model drops its capture)."""
    found = [r() for r in refs]
    return [c for c in found if c is not None]


class Dispersive(TrainingMethod):
    """The built ``dispersive`` method (see the module docstring)."""

    name = "dispersive"

    def __init__(self, options: DispersiveOptions):
        self.options = options
        self._captures: list[weakref.ref] = []

    def _live(self) -> list[FeatureCapture]:
        return live_captures(self._captures)

    def attach(self, model: nn.Module) -> None:
        self._captures.append(weakref.ref(install_capture(model, TAP_ATTR)))

    def for_sampling(self, model: nn.Module) -> None:
        disarm_capture(model, TAP_ATTR)

    def begin_pass(self, rows: slice, total: int) -> None:
        for c in self._live():
            c.armed, c.captured = True, None

    def end_pass(self) -> None:
        for c in self._live():
            c.armed = False

    def loss(self, ctx: StepContext, out: PassOutputs) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        captured = [c for c in self._live() if c.captured is not None]
        if len(captured) != 1:
            raise CbdmError("dispersive read no feature from the shared pass "
                            "(the objective must call begin_pass before it and end_pass after)")
        feature, captured[0].captured = captured[0].captured, None
        b = ctx.y.shape[0]
        until = self.options.until_step
        active = until is None or ctx.step is None or ctx.step < until
        with torch.autocast(device_type=feature.device.type, enabled=False), torch.set_grad_enabled(
                active and torch.is_grad_enabled()):
            term = dispersive_loss(feature[:b], self.options.tau)
        if not active:  # still logged: does the feature stay dispersed once the term is off?
            return {"dispersive": term.detach()}, term.new_zeros(())
        return {"dispersive": term.detach()}, self.options.weight * term


def build_dispersive(options: DispersiveOptions, ctx: MethodBuildContext) -> Dispersive:
    """Factory registered for ``dispersive``."""
    return Dispersive(options)


DISPERSIVE_SPEC = MethodSpec(
    options_model=DispersiveOptions,
    build=build_dispersive,
    paper="Wang & He, Diffuse and Disperse: Image Generation with Representation Regularization, arXiv 2506.09027",
    code="https://github.com/raywang4/DispLoss",
    sweepable=("weight", "tau"),
    requires=(HasFeatureTap,),  # checked when the model is built (build.check_capabilities)
)

__all__ = ["DISPERSIVE_SPEC", "Dispersive", "DispersiveOptions", "build_dispersive", "dispersive_loss"]
