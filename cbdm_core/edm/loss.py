"""The EDM training loss (kind ``diffusion_loss``, name ``edm``): log-normal sigma,
``lambda(sigma)``-weighted denoising error of the ``edm`` backbone's native denoiser."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import torch

from ..errors import CbdmError
from ..objectives import NoisyBatch
from ..schedules import NoiseSchedule
from .sigmas import P_MEAN, P_STD, SIGMA_DATA, edm_loss_weight, sigma_to_timestep, t_to_sigma


@dataclass
class EDMLoss:
    """EDM's loss: ``lambda(sigma) * ||D(x0 + sigma n; sigma, y) - x0||^2``, ``ln sigma ~ N(P_mean, P_std^2)``.

    ``NoisyBatch.time`` is sigma (the network's own time input), ``NoisyBatch.t`` the
    integer timestep of ``schedule`` with the nearest noise level, which is what the
    CBDM regulariser weights by (``tau * t``). The prediction is the model's native
    denoiser ``model.denoise(x, sigma, y, cond)``, so CBDM compares D-predictions.
    """

    schedule: NoiseSchedule
    P_mean: float = P_MEAN
    P_std: float = P_STD
    sigma_data: float = SIGMA_DATA

    def draw(self, x0: torch.Tensor, *, t: Optional[torch.Tensor] = None,
             noise: Optional[torch.Tensor] = None) -> NoisyBatch:
        b = x0.shape[0]
        if t is None:
            sigma = (torch.randn(b, device=x0.device) * self.P_std + self.P_mean).exp()
            t = sigma_to_timestep(sigma, self.schedule)
        else:
            # Fixed timesteps (tests, custom loops): the schedule's noise level at t.
            t = t.to(x0.device).long()
            if bool(((t < 0) | (t >= self.schedule.num_timesteps)).any()):
                raise CbdmError(f"timesteps must lie in 0..{self.schedule.num_timesteps - 1}")
            sigma = t_to_sigma(t, self.schedule).float()
        if noise is None:
            noise = torch.randn_like(x0)
        s = sigma.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
        return NoisyBatch(x=x0 + s * noise, time=sigma, t=t, target=x0,
                          weight=edm_loss_weight(sigma, self.sigma_data), noise=noise,
                          prediction="x0")

    def predict(self, model, x: torch.Tensor, time: torch.Tensor, y: torch.Tensor,
                cond: Optional[torch.Tensor]) -> torch.Tensor:
        denoise = getattr(model, "denoise", None)
        if denoise is None:
            raise CbdmError(f"the edm loss needs a model with denoise(x, sigma, y) (the edm backbone), "
                            f"got {type(model).__name__}")
        # The model's options name the loss settings too; a mismatch is a wiring error, not a choice.
        for name in ("sigma_data", "P_mean", "P_std"):
            own = getattr(model, name, None)
            if own is not None and not math.isclose(float(own), getattr(self, name)):
                raise CbdmError(f"the edm loss uses {name}={getattr(self, name)} but the model {own}; "
                                "they must agree")
        return denoise(x, time, y, cond)


def build_edm_loss(schedule: NoiseSchedule, *,
                   backbone_options: Union[None, Mapping[str, Any], Any] = None) -> EDMLoss:
    """Factory of the ``edm`` diffusion loss.

    ``backbone_options`` (the ``edm`` backbone's options, a model or a dict) supplies
    ``P_mean``, ``P_std`` and ``sigma_data``; EDM's defaults otherwise.
    """
    def opt(name: str, default: float) -> float:
        if backbone_options is None:
            return default
        if isinstance(backbone_options, Mapping):
            return float(backbone_options.get(name, default))
        return float(getattr(backbone_options, name, default))

    return EDMLoss(schedule, P_mean=opt("P_mean", P_MEAN), P_std=opt("P_std", P_STD),
                   sigma_data=opt("sigma_data", SIGMA_DATA))
