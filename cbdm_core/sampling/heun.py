"""Old home of EDM's Heun sampler, now :mod:`cbdm_core.edm.heun`; kept so imports keep working."""

from ..edm.heun import DEFAULT_STEPS, OPTIONS, HeunOptions, heun_sample, karras_sigmas

__all__ = ["DEFAULT_STEPS", "OPTIONS", "HeunOptions", "heun_sample", "karras_sigmas"]
