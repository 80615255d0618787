"""Built-in guidance: ``cfg`` (classifier-free, one batched pass), ``none``, ``classifier`` and
``cfg+classifier`` (classifier guidance with a noise-aware classifier)."""

from __future__ import annotations

from cbdm_core.guidance_classifier.guide import (ClassifierGuidanceOptions, build_cfg_classifier_guidance,
                                                 build_classifier_guidance)
from cbdm_core.hookspecs import hookimpl
from cbdm_core.interfaces import GuidanceSpec
from cbdm_core.sampling.guidance import cfg_denoiser, unguided_denoiser

_CLASSIFIER = ("Dhariwal & Nichol 2021, github.com/openai/guided-diffusion (condition_score); "
               "-G classifier=FILE (cbdm train-classifier --noisy RUN) -G scale=S (default 1.0); "
               "deviation: the score form also for ddpm (theirs: condition_mean)")


@hookimpl
def register_components(register) -> None:
    register("guidance", "cfg", cfg_denoiser,
             description="classifier-free guidance: (1+w) eps(x,y) - w eps(x,null), one batched pass")
    register("guidance", "none", unguided_denoiser,
             description="the model as is, no guidance (unconditional models)")
    register("guidance", "classifier",
             GuidanceSpec(build=build_classifier_guidance, options_model=ClassifierGuidanceOptions,
                          wants_schedule=True, active_at_zero=True),
             description="classifier guidance: eps - s sqrt(1-abar_t) grad log p(y|x_t,t), w must be 0; "
                         + _CLASSIFIER)
    register("guidance", "cfg+classifier",
             GuidanceSpec(build=build_cfg_classifier_guidance, options_model=ClassifierGuidanceOptions,
                          wants_schedule=True, active_at_zero=True),
             description="cfg's (1+w) eps(x,y) - w eps(x,null), then the classifier term; " + _CLASSIFIER)
