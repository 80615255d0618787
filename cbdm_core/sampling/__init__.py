"""Sampling: samplers (DDPM, DDIM), guidance and reproducible per-sample noise.

The public entry point is :func:`sample`; samplers and guidance are registry
components (kinds ``sampler`` and ``guidance``) so plugins can add more.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "sample",
    "ddim_sample",
    "ddpm_sample",
    "timestep_sequence",
    "cfg_denoiser",
    "unguided_denoiser",
    "randn_like_per_sample",
    "sample_generators",
    "sample_seed",
]

# Imported on first use, like cbdm_core's public names: the settings models
# (sampling.settings, read by `cbdm sample --help` to make its options) must not load torch.
_LAZY: dict[str, str] = {
    "sample": ".api",
    "ddim_sample": ".ddim",
    "timestep_sequence": ".ddim",
    "ddpm_sample": ".ddpm",
    "cfg_denoiser": ".guidance",
    "unguided_denoiser": ".guidance",
    "randn_like_per_sample": ".noise",
    "sample_generators": ".noise",
    "sample_seed": ".noise",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cbdm_core.sampling' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
