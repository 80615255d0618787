"""DDIM sampling (Song et al., 2021) over a subsequence of the training timesteps.

``eta = 0`` is the deterministic DDIM update; ``eta = 1`` gives DDPM-like
ancestral noise. The step from t to the previous visited timestep s uses

    sigma = eta * sqrt((1 - ab_s) / (1 - ab_t)) * sqrt(1 - ab_t / ab_s)
    x_s   = sqrt(ab_s) x0_hat + sqrt(1 - ab_s - sigma^2) eps + sigma z

and the last step goes to ab = 1 (x_0 itself).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

import torch
from pydantic import ConfigDict

from ..errors import CbdmError
from ..interfaces import DenoiseFn, StepCallback
from ..schedules import NoiseSchedule
from .bns import BoostSkipOptions, boost_and_skip, warn_if_deterministic
from .common import check_eta, predict_eps, reject_unknown_options
from .noise import GeneratorArg, check_generator, randn_noise

SPACINGS = ("uniform", "linspace", "trailing")
DEFAULT_STEPS = 100


def timestep_sequence(T: int, steps: int, spacing: str = "uniform") -> list[int]:
    """The ``steps`` training timesteps DDIM visits, ascending (sampling walks them backwards).

    * ``uniform`` (DDIM paper): ``i * (T // steps)`` for ``i = 0..steps-1``. When
      ``steps`` does not divide ``T`` the stride is still ``T // steps``, so the
      largest timestep is ``(steps - 1) * (T // steps)``, below ``T - 1``.
    * ``linspace``: ``round(linspace(0, T - 1, steps))``, from 0 to ``T - 1``.
    * ``trailing``: ``round(T - i * T / steps) - 1`` for ``i = 0..steps-1``,
      starting at ``T - 1``.

    Rounding is half-to-even, like numpy. ``steps`` must lie in ``1..T``.
    """
    T, steps = int(T), int(steps)
    if spacing not in SPACINGS:
        raise CbdmError(f"unknown timestep spacing {spacing!r}; choose one of: {', '.join(SPACINGS)}")
    if steps < 1:
        raise CbdmError(f"sampling steps must be >= 1, got {steps}")
    if steps > T:
        raise CbdmError(f"cannot take {steps} sampling steps with a {T}-step schedule (steps must be <= T)")
    if spacing == "uniform":
        seq = [i * (T // steps) for i in range(steps)]
    elif spacing == "linspace":
        seq = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().tolist()
    else:
        i = torch.arange(steps, dtype=torch.float64)
        seq = sorted(((T - i * T / steps).round().long() - 1).tolist())
    # steps <= T keeps the spacing >= 1, so rounding cannot merge two timesteps.
    if any(b <= a for a, b in zip(seq, seq[1:])):  # pragma: no cover - guarded above
        raise CbdmError(f"timestep spacing {spacing!r} gave repeated timesteps for T={T}, steps={steps}")
    return seq


class DDIMOptions(BoostSkipOptions):
    """Options of the ``ddim`` sampler (``cbdm sample -S KEY=VALUE``).

    Args:
        spacing: how the S timesteps are chosen from 0..T-1 (see :func:`timestep_sequence`).
        boost_gamma, skip: Boost-and-Skip (:mod:`cbdm_core.sampling.bns`); ``skip`` counts
            the S visited steps; defaults: off.
    """

    model_config = ConfigDict(extra="forbid")

    spacing: Literal["uniform", "linspace", "trailing"] = "uniform"


@torch.no_grad()
def ddim_sample(denoise_fn: DenoiseFn, schedule: NoiseSchedule, x_T: torch.Tensor, y: torch.Tensor, *,
                steps: Optional[int] = DEFAULT_STEPS, eta: float = 0.0, clip_denoised: Optional[bool] = None,
                generator: GeneratorArg = None, callback: Optional[StepCallback] = None,
                spacing: str = "uniform", boost_gamma: float = 1.0, skip: int = 0,
                **options: Any) -> torch.Tensor:
    """Run DDIM from ``x_T`` to ``x_0`` in ``steps`` network calls.

    Args:
        denoise_fn: ``eps = denoise_fn(x_t, t, y)``.
        schedule: the training noise schedule.
        x_T: starting noise ``[B, ...]``; its device and dtype are used throughout.
        y: labels ``[B]`` passed through to ``denoise_fn``.
        steps: number of steps S (``None``: 100), ``1 <= S <= T``.
        eta: 0 deterministic, 1 DDPM-like noise.
        clip_denoised: clamp predicted x_0 to [-1, 1]; ``None`` means False.
        generator: ``None``, a ``torch.Generator``, or one generator per sample (only used when eta > 0).
        callback: ``callback(step_index, S, x)`` after each step.
        spacing: ``uniform`` (default), ``linspace`` or ``trailing``; see :func:`timestep_sequence`.
        boost_gamma, skip: Boost-and-Skip: start from ``boost_gamma * x_T`` at the
            ``skip``-th largest visited timestep (defaults 1 and 0: plain DDIM).
    """
    reject_unknown_options("ddim", options, ("spacing", "boost_gamma", "skip"))
    eta = check_eta(eta)
    clip = False if clip_denoised is None else bool(clip_denoised)
    check_generator(generator, x_T.shape[0])
    seq = timestep_sequence(schedule.num_timesteps, DEFAULT_STEPS if steps is None else steps, spacing)
    ab_all = schedule.alphas_cumprod.tolist()
    x, visited = boost_and_skip(x_T, seq[::-1], boost_gamma, skip)
    warn_if_deterministic(boost_gamma, eta, clip)
    n = len(visited)

    for i in range(n):
        t = visited[i]
        ab = ab_all[t]
        ab_prev = ab_all[visited[i + 1]] if i < n - 1 else 1.0
        eps = predict_eps(denoise_fn, x, t, y)
        x0 = (x - math.sqrt(1.0 - ab) * eps) / math.sqrt(ab)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
            # Keep eps consistent with the clipped x_0 so the update stays on its path.
            eps = (x - math.sqrt(ab) * x0) / math.sqrt(1.0 - ab)
        sigma = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab)) * math.sqrt(max(0.0, 1.0 - ab / ab_prev))
        dir_coef = math.sqrt(max(0.0, 1.0 - ab_prev - sigma * sigma))
        x = math.sqrt(ab_prev) * x0 + dir_coef * eps
        if sigma > 0.0:
            x = x + sigma * randn_noise(x.shape, generator, x.device, x.dtype)
        if callback is not None:
            callback(i, n, x)
    return x
