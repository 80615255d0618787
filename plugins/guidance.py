"""Built-in guidance: ``cfg`` (classifier-free, one batched pass) and ``none``."""

from __future__ import annotations

from cbdm_core.hookspecs import hookimpl
from cbdm_core.sampling.guidance import cfg_denoiser, unguided_denoiser


@hookimpl
def register_components(register) -> None:
    register("guidance", "cfg", cfg_denoiser,
             description="classifier-free guidance: (1+w) eps(x,y) - w eps(x,null), one batched pass")
    register("guidance", "none", unguided_denoiser,
             description="the model as is, no guidance (unconditional models)")
