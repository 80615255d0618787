"""A training method and a guidance with options, written from docs/plugins.md alone.

* method ``focal-t``: weights each row of the base diffusion loss by the noise level of
  its timestep, ``w(t) = (1 - alpha_bar_t) ** gamma`` (``gamma = 0``: plain DDPM, bit for
  bit), through ``TrainingMethod.sample_weight``; the logged ``diffusion`` is the
  weighted loss. ``cbdm train --method focal-t -M gamma=2``.
* guidance ``clipped-cfg``: classifier-free guidance whose guidance direction is clipped
  elementwise, ``eps = eps(x, y) + w * clamp(eps(x, y) - eps(x, null), -clip, clip)``.
  ``cbdm sample RUN -w 2 --guidance-method clipped-cfg -G clip=0.5``.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from cbdm_core import hookimpl
from cbdm_core.interfaces import GuidanceSpec
from cbdm_core.methods import MethodBuildContext, MethodSpec, StepContext, TrainingMethod


class FocalTOptions(BaseModel):
    """Options of ``focal-t``.

    Args:
        gamma: how strongly noisy timesteps are favoured (0: every row weighs 1).
    """

    model_config = ConfigDict(extra="forbid")

    gamma: float = Field(1.0, ge=0)


class FocalT(TrainingMethod):
    """Per-row weight ``(1 - alpha_bar_t) ** gamma`` of the base loss; nothing else."""

    name = "focal-t"

    def __init__(self, gamma: float):
        super().__init__()  # TrainingMethod takes no arguments
        self.gamma = gamma

    def sample_weight(self, ctx: StepContext) -> torch.Tensor:
        # A function of each row's own t only: under torchrun it is called on a rank's rows.
        noise_level = 1.0 - ctx.schedule.alphas_cumprod.to(ctx.t.device)[ctx.t]
        return noise_level.pow(self.gamma).float()


def build_focal_t(options: FocalTOptions, ctx: MethodBuildContext) -> FocalT:
    return FocalT(options.gamma)


class ClippedCFGOptions(BaseModel):
    """Options of ``clipped-cfg``.

    Args:
        clip: bound of each element of the guidance direction ``eps(x, y) - eps(x, null)``.
    """

    model_config = ConfigDict(extra="forbid")

    clip: float = Field(1.0, gt=0)


def clipped_cfg(model, scale: float, null_label: int, clip: float = 1.0):
    """``denoise_fn(x_t, t, y)`` for guidance strength ``scale`` (one batched pass)."""
    w = float(scale)

    def denoise(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        null_y = torch.full_like(y, null_label)
        cond, uncond = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null_y])).chunk(2)
        return cond + w * (cond - uncond).clamp(-clip, clip)

    return denoise


@hookimpl
def register_components(register) -> None:
    register("method", "focal-t", MethodSpec(options_model=FocalTOptions, build=build_focal_t,
                                             paper="(example plugin)", code="examples/cbdm-focal"),
             description="example: base loss weighted per row by (1 - alpha_bar_t)^gamma")
    register("guidance", "clipped-cfg", GuidanceSpec(build=clipped_cfg, options_model=ClippedCFGOptions),
             description="example: classifier-free guidance with the guidance direction clipped to +-clip")
