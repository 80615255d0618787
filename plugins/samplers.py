"""Built-in samplers: ``ddpm`` (ancestral, all T steps) and ``ddim`` (few steps, eta)."""

from __future__ import annotations

from cbdm_core.hookspecs import hookimpl
from cbdm_core.interfaces import SamplerSpec
from cbdm_core.sampling.ddim import DEFAULT_STEPS, DDIMOptions, ddim_sample
from cbdm_core.sampling.ddpm import DDPMOptions, ddpm_sample


@hookimpl
def register_components(register) -> None:
    register("sampler", "ddpm", SamplerSpec(run=ddpm_sample, default_steps=None, options_model=DDPMOptions),
             description="DDPM ancestral sampling over all T steps; var_type fixedlarge|fixedsmall")
    register("sampler", "ddim", SamplerSpec(run=ddim_sample, default_steps=DEFAULT_STEPS, options_model=DDIMOptions),
             description="DDIM with eta (0 = deterministic); spacing uniform|linspace|trailing")
