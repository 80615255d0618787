"""EDM's second-order Heun sampler (Karras et al., 2022, Algorithm 2) for any eps model.

The sampler walks noise levels ``sigma_0 > ... > sigma_{N-1} > sigma_N = 0`` with

    sigma_i = (s_max^(1/rho) + i / (N - 1) * (s_min^(1/rho) - s_max^(1/rho)))^rho

in the variance-exploding view ``x = x0 + sigma n``: an Euler step with a Heun
correction, the last step (to sigma = 0) Euler only, so N steps cost 2N - 1
network calls. Optional churn (``S_churn > 0``) raises sigma_i to
``sigma_hat = (1 + gamma) sigma_i`` with fresh noise first (EDM's stochastic sampler).

The network is the usual eps view ``denoise_fn(x_t, t, y)`` on the discrete schedule:
at noise level sigma it gets ``x_t = x / sqrt(1 + sigma^2)`` and a float timestep
``t(sigma)`` (log-sigma interpolated, see :mod:`cbdm_core.edm.sigmas`), and

    D(x; sigma) = x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma), y).

A discrete VP model never saw noise levels outside the schedule's range, so
``sigma_max`` and ``sigma_min`` are clamped to the schedule's largest and smallest
sigma (for DDPM's linear schedule, T = 1000: about 157 and 0.01). ``x_T`` is unit
noise; it is scaled by the (clamped) ``sigma_max`` here.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import CbdmError
from ..interfaces import DenoiseFn, StepCallback
from ..sampling.common import reject_unknown_options
from ..sampling.noise import GeneratorArg, check_generator, randn_noise
from ..schedules import NoiseSchedule
from .sigmas import schedule_sigmas, sigma_to_t

DEFAULT_STEPS = 18
OPTIONS = ("rho", "sigma_min", "sigma_max", "S_churn", "S_min", "S_max", "S_noise")
# sample(eta=...) with heun: its spec takes no eta, and sample() refuses it with this line.
NO_ETA = "the heun sampler takes no eta; use its S_churn option for stochastic sampling"


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """The ``steps`` decreasing noise levels of EDM's time discretisation, followed by 0."""
    if steps < 1:
        raise CbdmError(f"sampling steps must be >= 1, got {steps}")
    if steps == 1:
        return [float(sigma_max), 0.0]
    a, b = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return [(a + i / (steps - 1) * (b - a)) ** rho for i in range(steps)] + [0.0]


def _check_options(rho: float, sigma_min: float, sigma_max: float, S_churn: float, S_noise: float) -> None:
    if not rho > 0:
        raise CbdmError(f"heun: rho must be > 0, got {rho}")
    if not 0 < sigma_min < sigma_max:
        raise CbdmError(f"heun: need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
    if not S_churn >= 0:
        raise CbdmError(f"heun: S_churn must be >= 0, got {S_churn}")
    if not S_noise >= 0:
        raise CbdmError(f"heun: S_noise must be >= 0, got {S_noise}")


class HeunOptions(BaseModel):
    """Options of the ``heun`` sampler (EDM's Algorithm 2; ``cbdm sample -S KEY=VALUE``).

    Args:
        rho: exponent of the sigma discretisation.
        sigma_min, sigma_max: noise range (clipped to the schedule's).
        S_churn, S_min, S_max, S_noise: stochastic churn and its sigma window and noise scale.
    """

    model_config = ConfigDict(extra="forbid")

    rho: float = Field(7.0, gt=0)
    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = Field(80.0, gt=0)
    S_churn: float = Field(0.0, ge=0)
    S_min: float = Field(0.0, ge=0)
    S_max: float = Field(float("inf"), ge=0)
    S_noise: float = Field(1.0, ge=0)


def _clamped_sigmas(schedule: NoiseSchedule, n: int, sigma_min: float, sigma_max: float,
                    rho: float) -> tuple[list[float], float]:
    """EDM's ``n`` noise levels (then 0) within the schedule's sigma range, and its top sigma."""
    sched = schedule_sigmas(schedule)
    lo, hi = float(sched[0]), float(sched[-1])
    s_max = min(sigma_max, hi)
    s_min = min(max(sigma_min, lo), s_max)
    if s_min >= s_max and n > 1:
        s_min = s_max  # a one-level schedule: every step at the same sigma, then to 0
    return karras_sigmas(n, s_min, s_max, rho), hi


def _denoiser(denoise_fn: DenoiseFn, schedule: NoiseSchedule, y: torch.Tensor,
              clip: bool) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """``D(x, sigma)``: the denoised image at noise level ``sigma`` from the eps network."""

    def denoised(x: torch.Tensor, sigma: float) -> torch.Tensor:
        s = torch.full((x.shape[0],), sigma, dtype=torch.float64, device=x.device)
        t = sigma_to_t(s, schedule).to(torch.float32)
        eps = denoise_fn(x / math.sqrt(1.0 + sigma * sigma), t, y)
        if eps.shape != x.shape:
            raise CbdmError(f"the denoiser returned shape {tuple(eps.shape)} for input {tuple(x.shape)}")
        d = x - sigma * eps.to(x.dtype)
        return d.clamp(-1.0, 1.0) if clip else d

    return denoised


@torch.no_grad()
def heun_sample(denoise_fn: DenoiseFn, schedule: NoiseSchedule, x_T: torch.Tensor, y: torch.Tensor, *,
                steps: Optional[int] = DEFAULT_STEPS, clip_denoised: Optional[bool] = None,
                generator: GeneratorArg = None, callback: Optional[StepCallback] = None,
                rho: float = 7.0, sigma_min: float = 0.002, sigma_max: float = 80.0,
                S_churn: float = 0.0, S_min: float = 0.0, S_max: float = float("inf"), S_noise: float = 1.0,
                **options: Any) -> torch.Tensor:
    """Run EDM's Heun sampler from unit noise ``x_T`` to ``x_0``.

    Args:
        denoise_fn: ``eps = denoise_fn(x_t, t, y)``; ``t`` is a float ``[B]`` tensor here.
        schedule: the training noise schedule (sets the usable sigma range).
        x_T: unit-variance starting noise ``[B, ...]``; its device and dtype are used throughout.
        y: labels ``[B]`` passed through to ``denoise_fn``.
        steps: number of noise levels N (``None``: 18); 2N - 1 network calls.
        clip_denoised: clamp the denoised image D to [-1, 1]; ``None`` means False.
        generator: ``None``, a ``torch.Generator``, or one per sample (churn noise only).
        callback: ``callback(step_index, N, x)`` after each step.
        rho, sigma_min, sigma_max: EDM's discretisation (7, 0.002, 80), sigmas clamped to the schedule.
        S_churn, S_min, S_max, S_noise: EDM's churn; ``S_churn = 0`` is deterministic.
    """
    reject_unknown_options("heun", options, OPTIONS)
    rho, S_churn, S_min, S_max, S_noise = float(rho), float(S_churn), float(S_min), float(S_max), float(S_noise)
    _check_options(rho, float(sigma_min), float(sigma_max), S_churn, S_noise)
    clip = bool(clip_denoised) if clip_denoised is not None else False
    check_generator(generator, x_T.shape[0])
    n = DEFAULT_STEPS if steps is None else int(steps)
    sigmas, hi = _clamped_sigmas(schedule, n, float(sigma_min), float(sigma_max), rho)
    denoised = _denoiser(denoise_fn, schedule, y, clip)
    gamma_max = min(S_churn / n, math.sqrt(2.0) - 1.0) if S_churn > 0 else 0.0
    x = x_T * sigmas[0]
    for i in range(n):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        gamma = gamma_max if S_min <= s_cur <= S_max else 0.0
        # Churn never lifts sigma above what the model was trained on.
        s_hat = min(s_cur * (1.0 + gamma), hi)
        if s_hat > s_cur:
            z = randn_noise(x.shape, generator, x.device, x.dtype)
            x = x + math.sqrt(s_hat * s_hat - s_cur * s_cur) * S_noise * z
        d = (x - denoised(x, s_hat)) / s_hat
        x_next = x + (s_next - s_hat) * d
        if s_next > 0.0:
            d_next = (x_next - denoised(x_next, s_next)) / s_next
            x_next = x + (s_next - s_hat) * (0.5 * d + 0.5 * d_next)
        x = x_next
        if callback is not None:
            callback(i, n, x)
    return x
