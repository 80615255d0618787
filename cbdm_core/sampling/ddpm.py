"""Ancestral DDPM sampling over all ``T`` steps (Ho et al., 2020).

Follows the reference DDPM code: the mean of p(x_{t-1} | x_t) is the posterior
mean of q(x_{t-1} | x_t, x_0) at the predicted x_0 (optionally clipped to
[-1, 1]), and the variance is one of

* ``fixedlarge``: beta_t, with the t=0 entry replaced by the posterior variance
  at t=1 (``cat([posterior_variance[1:2], betas[1:]])``);
* ``fixedsmall``: the posterior variance, its log clipped by the same trick
  (``log(cat([posterior_variance[1:2], posterior_variance[1:]]))``).

No noise is added on the last step (t=0).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from pydantic import ConfigDict

from ..errors import CbdmError
from ..interfaces import DenoiseFn, StepCallback
from ..schedules import NoiseSchedule
from .bns import BoostSkipOptions, boost_and_skip
from .common import predict_eps, reject_unknown_options
from .noise import GeneratorArg, check_generator, randn_noise

VAR_TYPES = ("fixedlarge", "fixedsmall")
# sample(eta=...) with ddpm: its spec takes no eta, and sample() refuses it with this line.
NO_ETA = "the ddpm sampler takes no eta (its variance is set by var_type); use ddim for eta"


def ddpm_coefficients(schedule: NoiseSchedule, var_type: str) -> dict[str, torch.Tensor]:
    """float64 CPU vectors over t: ``coef1``, ``coef2`` (posterior mean) and ``log_var``."""
    if var_type not in VAR_TYPES:
        raise CbdmError(f"unknown DDPM var_type {var_type!r}; choose one of: {', '.join(VAR_TYPES)}")
    betas = schedule.betas
    ab, ab_prev = schedule.alphas_cumprod, schedule.alphas_cumprod_prev
    coef1 = betas * ab_prev.sqrt() / (1.0 - ab)
    coef2 = (1.0 - ab_prev) * schedule.alphas.sqrt() / (1.0 - ab)
    post = schedule.posterior_variance
    if schedule.num_timesteps < 2:
        # posterior_variance[0] is 0 and is never used (no noise at t=0).
        var = post.clone()
    elif var_type == "fixedlarge":
        var = torch.cat([post[1:2], betas[1:]])
    else:
        var = torch.cat([post[1:2], post[1:]])
    # posterior_variance[0] is 0: the replacement above keeps log() finite.
    log_var = var.clamp(min=1e-300).log()
    return {"coef1": coef1, "coef2": coef2, "log_var": log_var}


class DDPMOptions(BoostSkipOptions):
    """Options of the ``ddpm`` sampler (``cbdm sample -S KEY=VALUE``).

    Args:
        var_type: reverse-step variance: ``fixedlarge`` (beta_t, the reference code's
            sampling choice) or ``fixedsmall`` (the posterior variance).
        boost_gamma, skip: Boost-and-Skip (:mod:`cbdm_core.sampling.bns`); defaults: off.
    """

    model_config = ConfigDict(extra="forbid")

    var_type: Literal["fixedlarge", "fixedsmall"] = "fixedlarge"


@torch.no_grad()
def ddpm_sample(denoise_fn: DenoiseFn, schedule: NoiseSchedule, x_T: torch.Tensor, y: torch.Tensor, *,
                steps: Optional[int] = None, clip_denoised: Optional[bool] = None,
                generator: GeneratorArg = None, callback: Optional[StepCallback] = None,
                var_type: str = "fixedlarge", boost_gamma: float = 1.0, skip: int = 0,
                **options: Any) -> torch.Tensor:
    """Run the DDPM reverse chain from ``x_T`` down to ``x_0``.

    Args:
        denoise_fn: ``eps = denoise_fn(x_t, t, y)``.
        schedule: the training noise schedule (``T`` steps).
        x_T: starting noise ``[B, ...]``; its device and dtype are used throughout.
        y: labels ``[B]`` passed through to ``denoise_fn``.
        steps: ``None`` or ``T``; DDPM always visits every step.
        clip_denoised: clamp predicted x_0 to [-1, 1]; ``None`` means True (reference default).
        generator: ``None``, a ``torch.Generator``, or one generator per sample.
        callback: ``callback(step_index, T, x)`` after each step.
        var_type: ``fixedlarge`` (default) or ``fixedsmall``.
        boost_gamma, skip: Boost-and-Skip: start from ``boost_gamma * x_T`` at timestep
            ``T - 1 - skip`` (defaults 1 and 0: plain DDPM).
    """
    reject_unknown_options("ddpm", options, ("var_type", "boost_gamma", "skip"))
    T = schedule.num_timesteps
    if steps is not None and int(steps) != T:
        raise CbdmError(f"the ddpm sampler always runs all T={T} steps, got steps={steps}; "
                        "leave the steps out (no --steps), or use the ddim sampler for fewer steps")
    clip = True if clip_denoised is None else bool(clip_denoised)
    check_generator(generator, x_T.shape[0])
    c = ddpm_coefficients(schedule, var_type)
    # Python floats per step: no per-step host-to-device copies of the tables.
    coef1, coef2 = c["coef1"].tolist(), c["coef2"].tolist()
    std = (0.5 * c["log_var"]).exp().tolist()
    sqrt_recip_ab = (1.0 / schedule.alphas_cumprod).sqrt().tolist()
    sqrt_recipm1_ab = (1.0 / schedule.alphas_cumprod - 1.0).sqrt().tolist()

    x, visited = boost_and_skip(x_T, range(T - 1, -1, -1), boost_gamma, skip)
    n = len(visited)
    for i, t in enumerate(visited):
        eps = predict_eps(denoise_fn, x, t, y)
        x0 = sqrt_recip_ab[t] * x - sqrt_recipm1_ab[t] * eps
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        mean = coef1[t] * x0 + coef2[t] * x
        if t > 0:
            x = mean + std[t] * randn_noise(x.shape, generator, x.device, x.dtype)
        else:
            x = mean
        if callback is not None:
            callback(i, n, x)
    return x
