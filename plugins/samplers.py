"""Built-in samplers: ``ddpm`` (ancestral, all T steps) and ``ddim`` (few steps, eta)."""

from __future__ import annotations

from cbdm_core.hookspecs import hookimpl
from cbdm_core.interfaces import SamplerSpec
from cbdm_core.sampling.ddim import DEFAULT_STEPS, DDIMOptions, ddim_sample
from cbdm_core.sampling.ddpm import NO_ETA, DDPMOptions, ddpm_sample

# Boost-and-Skip's two options, with the authors' defaults (off), on both samplers.
_BNS = ("Boost-and-Skip -S boost_gamma=G -S skip=D (Um, Kim & Ye ICML 2025, github.com/soobin-um/BnS "
        "--gamma/--Delta_t; defaults 1.0/0 = off; skip counts visited steps)")


@hookimpl
def register_components(register) -> None:
    register("sampler", "ddpm", SamplerSpec(run=ddpm_sample, default_steps=None, options_model=DDPMOptions,
                                            common_options=("clip_denoised",), refusals={"eta": NO_ETA}),
             description="DDPM ancestral sampling over all T steps; var_type fixedlarge|fixedsmall; " + _BNS)
    register("sampler", "ddim", SamplerSpec(run=ddim_sample, default_steps=DEFAULT_STEPS, options_model=DDIMOptions),
             description="DDIM with eta (0 = deterministic); spacing uniform|linspace|trailing; " + _BNS)
