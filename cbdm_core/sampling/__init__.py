"""Sampling: samplers (DDPM, DDIM), guidance and reproducible per-sample noise.

The public entry point is :func:`sample`; samplers and guidance are registry
components (kinds ``sampler`` and ``guidance``) so plugins can add more.
"""

from .api import sample
from .ddim import ddim_sample, timestep_sequence
from .ddpm import ddpm_sample
from .guidance import cfg_denoiser, unguided_denoiser
from .noise import randn_like_per_sample, sample_generators, sample_seed

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
