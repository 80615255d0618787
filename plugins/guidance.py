"""Built-in guidance: ``cfg`` (classifier-free, one batched pass), ``none``, ``classifier`` and
``cfg+classifier`` (classifier guidance with a noise-aware classifier), ``minority`` and
``cfg+minority`` (minority guidance), ``self-minority`` and ``cfg+self-minority``."""

from __future__ import annotations

from cbdm_core.guidance_classifier.guide import (ClassifierGuidanceOptions, build_cfg_classifier_guidance,
                                                 build_classifier_guidance)
from cbdm_core.hookspecs import hookimpl
from cbdm_core.interfaces import GuidanceSpec
from cbdm_core.minority.guide import (MinorityGuidanceOptions, build_cfg_minority_guidance,
                                      build_minority_guidance)
from cbdm_core.minority.self_guide import (SelfMinorityOptions, build_cfg_self_minority_guidance,
                                           build_self_minority_guidance)
from cbdm_core.sampling.guidance import cfg_denoiser, unguided_denoiser

_CLASSIFIER = ("Dhariwal & Nichol 2021, github.com/openai/guided-diffusion (condition_score); "
               "-G classifier=FILE (cbdm train-classifier --noisy RUN) -G scale=S (default 1.0); "
               "deviation: the score form also for ddpm (theirs: condition_mean)")
_MINORITY = ("Um, Lee & Ye, ICLR 2024, github.com/soobin-um/minority-guidance (classifier_sample.py); "
             "-G classifier=FILE (cbdm train-classifier --noisy RUN --minority) -G scale=W (default 1.0) "
             "-G level=L (default: the highest); deviations: minority score distance = feature-classifier "
             "or pixel L2 unless LPIPS weights are local (theirs: LPIPS), classifier on x_t (theirs: on "
             "ImageNet-classifier features), score form also for ddpm (theirs: condition_mean)")

_SELF = ("Um & Ye, github.com/soobin-um/sg-minority (gaussian_diffusion.py compute_mg_grad); -G scale=S "
         "(mg_scale, 1.0) -G inter_rate=5 -G p_ratio=0.8 ...; deviations: distance pixel L2 (their "
         "--use_lpips False) or a feature classifier unless LPIPS weights are local (theirs: LPIPS-alex), "
         "t on the training grid (theirs: respaced index), score form for every sampler (theirs: "
         "mean + variance * g in p_sample)")


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
    register("guidance", "minority",
             GuidanceSpec(build=build_minority_guidance, options_model=MinorityGuidanceOptions,
                          wants_schedule=True, active_at_zero=True),
             description="minority guidance: eps - w sqrt(1-abar_t) grad log p(level|x_t,t[,y]), w must be 0; "
                         + _MINORITY)
    register("guidance", "cfg+minority",
             GuidanceSpec(build=build_cfg_minority_guidance, options_model=MinorityGuidanceOptions,
                          wants_schedule=True, active_at_zero=True),
             description="cfg's (1+w) eps(x,y) - w eps(x,null), then the minority term; " + _MINORITY)
    register("guidance", "self-minority",
             GuidanceSpec(build=build_self_minority_guidance, options_model=SelfMinorityOptions,
                          wants_schedule=True, active_at_zero=True),
             description="self-guided minority: eps - s sqrt(1-abar_t) g, g the normalised gradient of the "
                         "model's own minority score, every inter_rate steps; w must be 0; " + _SELF)
    register("guidance", "cfg+self-minority",
             GuidanceSpec(build=build_cfg_self_minority_guidance, options_model=SelfMinorityOptions,
                          wants_schedule=True, active_at_zero=True),
             description="cfg's (1+w) eps(x,y) - w eps(x,null), then the self-minority term; " + _SELF)
