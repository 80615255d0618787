"""EDM (Karras et al., 2022) pieces shared by the backbone, the loss and the sampler.

Noise levels ``sigma`` (the variance-exploding view ``x = x0 + sigma * n``) and the
discrete variance-preserving schedule (``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps``)
describe the same noisy image up to a scale when they share the noise-to-signal
ratio: ``sigma_t^2 = (1 - ab_t) / ab_t`` and ``x_t = x / sqrt(1 + sigma^2)``.

* :func:`t_to_sigma` maps a (possibly fractional) timestep to sigma by linear
  interpolation of ``log sigma_t`` between neighbouring integer timesteps;
* :func:`sigma_to_t` is its exact inverse (a float t), clamped to ``0..T-1``;
* :func:`sigma_to_timestep` rounds to the integer timestep nearest in ``log sigma``.

:class:`EDMLoss` is the EDM training loss (kind ``diffusion_loss``, name ``edm``).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import torch

from .errors import CbdmError
from .objectives import NoisyBatch
from .schedules import NoiseSchedule

# EDM's defaults (Karras et al. 2022, Table 1).
SIGMA_DATA = 0.5
P_MEAN = -1.2
P_STD = 1.2


def schedule_sigmas(schedule: NoiseSchedule) -> torch.Tensor:
    """``sigma_t = sqrt((1 - ab_t) / ab_t)`` for ``t = 0..T-1``, float64 on the CPU (increasing)."""
    ab = schedule.alphas_cumprod
    return ((1.0 - ab) / ab).sqrt()


_LOG_SIGMAS: "weakref.WeakKeyDictionary[NoiseSchedule, dict[torch.device, torch.Tensor]]" = weakref.WeakKeyDictionary()


def _log_sigmas(schedule: NoiseSchedule, device: torch.device) -> torch.Tensor:
    # Cached per schedule and device: samplers call this at every step.
    per_device = _LOG_SIGMAS.setdefault(schedule, {})
    if device not in per_device:
        per_device[device] = schedule_sigmas(schedule).log().to(device)
    return per_device[device]


def t_to_sigma(t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """sigma at timesteps ``t`` (integer or float, clamped to ``0..T-1``), float64 on ``t``'s device.

    Integer ``t`` gives the schedule's sigma exactly; a fractional ``t`` interpolates
    ``log sigma`` linearly between its two neighbours.
    """
    log_s = _log_sigmas(schedule, t.device)
    T = log_s.shape[0]
    tf = t.to(torch.float64).clamp(0.0, T - 1)
    lo = tf.floor().long().clamp(max=T - 1)
    hi = (lo + 1).clamp(max=T - 1)
    frac = tf - lo.to(torch.float64)
    return (log_s[lo] + frac * (log_s[hi] - log_s[lo])).exp()


def sigma_to_t(sigma: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """The float timestep whose :func:`t_to_sigma` is ``sigma`` (clamped to ``0..T-1``), float64."""
    log_s = _log_sigmas(schedule, sigma.device)
    T = log_s.shape[0]
    if T == 1:
        return torch.zeros_like(sigma, dtype=torch.float64)
    ls = sigma.to(torch.float64).clamp(min=1e-300).log()
    # Index of the first schedule sigma >= sigma, kept inside 1..T-1 so (hi - 1, hi) is a segment.
    hi = torch.searchsorted(log_s, ls.contiguous()).clamp(1, T - 1)
    lo = hi - 1
    frac = (ls - log_s[lo]) / (log_s[hi] - log_s[lo])
    return (lo.to(torch.float64) + frac).clamp(0.0, T - 1)


def sigma_to_timestep(sigma: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """The integer timestep (int64, ``0..T-1``) whose sigma is nearest to ``sigma`` in log scale."""
    return sigma_to_t(sigma, schedule).round().long()


def edm_coefficients(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> dict[str, torch.Tensor]:
    """EDM's preconditioning: ``c_skip, c_out, c_in, c_noise`` at noise level ``sigma``."""
    s2, sd2 = sigma * sigma, sigma_data * sigma_data
    return {
        "c_skip": sd2 / (s2 + sd2),
        "c_out": sigma * sigma_data / (s2 + sd2).sqrt(),
        "c_in": 1.0 / (s2 + sd2).sqrt(),
        "c_noise": sigma.log() / 4.0,
    }


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """``lambda(sigma) = (sigma^2 + sd^2) / (sigma * sd)^2`` (= 1 / c_out^2)."""
    return (sigma * sigma + sigma_data ** 2) / (sigma * sigma_data) ** 2


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
