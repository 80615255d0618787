"""EDM components: the preconditioned ``edm`` backbone, its ``edm`` loss and the ``heun`` sampler."""

from __future__ import annotations

from cbdm_core.edm.heun import DEFAULT_STEPS, NO_ETA, HeunOptions, heun_sample
from cbdm_core.edm.loss import build_edm_loss
from cbdm_core.edm.precond import EDMOptions, build_edm
from cbdm_core.hookspecs import hookimpl
from cbdm_core.interfaces import BackboneSpec, SamplerSpec


@hookimpl
def register_components(register) -> None:
    register("backbone", "edm", BackboneSpec(options_model=EDMOptions, build=build_edm, default_loss="edm",
                                          wrap_options=lambda inner, opts: {"inner": inner, "inner_options": opts}),
             description="EDM preconditioning (Karras et al. 2022) around another backbone (inner: unet)")
    register("diffusion_loss", "edm", build_edm_loss,
             description="EDM loss: log-normal sigma, lambda(sigma)-weighted denoising error")
    register("sampler", "heun", SamplerSpec(run=heun_sample, default_steps=DEFAULT_STEPS, options_model=HeunOptions,
                                            common_options=("clip_denoised",), refusals={"eta": NO_ETA}),
             description="EDM's 2nd-order Heun sampler (rho=7, optional S_churn) for any eps model")
