"""EDM (Karras et al., 2022) noise levels, shared by the backbone, the loss and the sampler.

Noise levels ``sigma`` (the variance-exploding view ``x = x0 + sigma * n``) and the
discrete variance-preserving schedule (``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps``)
describe the same noisy image up to a scale when they share the noise-to-signal
ratio: ``sigma_t^2 = (1 - ab_t) / ab_t`` and ``x_t = x / sqrt(1 + sigma^2)``.

* :func:`t_to_sigma` maps a (possibly fractional) timestep to sigma by linear
  interpolation of ``log sigma_t`` between neighbouring integer timesteps;
* :func:`sigma_to_t` is its exact inverse (a float t), clamped to ``0..T-1``;
* :func:`sigma_to_timestep` rounds to the integer timestep nearest in ``log sigma``.
"""

from __future__ import annotations

import weakref

import torch

from ..schedules import NoiseSchedule

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
