"""Sampling settings checked before any work: a training preview, a protocol's sampling.

A bad preview setting used to surface only at the final preview, after the whole training
run; a bad protocol sampling setting only after every run of a study was trained. Here the
sampler itself runs once on a 1-pixel image with a dummy denoiser, so it rejects what it
would reject later (unknown option, ``steps > T``, a negative eta, ...), and the numbers the
sampler takes are bounded by the settings model itself
(:class:`~cbdm_core.sampling.settings.SamplerSettings`: finite, guidance at most
``MAX_GUIDANCE``), so they are not re-checked here.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from pydantic import ValidationError

from .errors import CbdmError, ConfigError


class _NullDenoiser:
    """Predicts zero noise; stands in for the network so the sampler's own checks run."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def nonfinite_value(value: Any, prefix: str = "") -> str | None:
    """The dotted path of the first NaN/inf float inside ``value`` (dicts, lists), else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return prefix or "(value)"
    if isinstance(value, dict):
        items: Iterable = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = nonfinite_value(item, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def check_sampling_settings(settings: Any, *, schedule: Any, where: str, guidance: float | None = None) -> None:
    """Refuse, in one line starting with ``where``, sampling settings that would fail later.

    Args:
        settings: a :class:`~cbdm_core.sampling.settings.SamplingSettings`.
        schedule: the noise schedule of the model it will sample (its length is T).
        where: what to name in the message (``preview``, ``sampling``).
        guidance: the strength to check instead of ``settings.guidance`` (a study sets it;
            validated by the settings model, like every number of ``settings``).
    """
    from .sampling.api import resolve_steps, sample
    from .sampling.noise import sample_generators

    # Free-form options are checked by the sampler's / guidance's options models; NaN and inf
    # in them are refused here (the settings model checks its own numbers).
    for name, value in (("sampler_options", settings.sampler_options),
                        ("guidance_options", settings.guidance_options)):
        bad = nonfinite_value(value)
        if bad is not None:
            raise ConfigError(f"{where}.{name}.{bad} must be a finite number")
    try:
        kwargs = (settings if guidance is None else settings.with_guidance(guidance)).sample_kwargs()
    except ValidationError as exc:  # a study's w outside the settings' bounds
        raise ConfigError(f"{where}.guidance: {exc.errors()[0]['msg']}") from None
    try:
        kwargs["steps"] = resolve_steps(settings.sampler, settings.steps, schedule.num_timesteps)
        kwargs["precision"] = "fp32"  # this stand-in runs on the CPU; bf16 is checked on the run's device
        sample(_NullDenoiser(1), schedule, torch.zeros(1, 1, 1, 1), torch.zeros(1, dtype=torch.long),
               generator=sample_generators(0, [0]), **kwargs)
    except CbdmError as exc:
        raise ConfigError(f"{where}: {exc}") from None

