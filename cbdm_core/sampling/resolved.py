"""A sampling job's names resolved once: :class:`ResolvedSampling`.

:class:`~cbdm_core.sampling.settings.SamplerSettings` name a sampler and a guidance. The edge
(``cbdm sample``/``sweep``, the experiment planners, :mod:`cbdm_core.sampling.api`) looks them
up once, with :func:`cbdm_core.sampling.api.resolve_sampling`; the layers below
(:mod:`.generate`, :mod:`.preflight`) receive this object and never read the registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from ..interfaces import SamplerSpec
    from .settings import SamplerSettings


def steps_or_default(spec: "SamplerSpec", steps: Optional[int], T: int) -> int:
    """The step count actually used: ``steps``, or ``spec``'s default capped at ``T``.

    A sampler whose default is ``None`` (``ddpm``) runs all ``T`` steps.
    """
    if steps is not None:
        return int(steps)
    default = spec.default_steps
    return int(T) if default is None else min(int(default), int(T))


@dataclass(frozen=True)
class ResolvedSampling:
    """Sampler settings with their sampler and guidance looked up.

    Attributes:
        settings: the settings resolved (a :class:`SamplerSettings`, or a
            :class:`~cbdm_core.sampling.settings.SamplingSettings` with its job), the guidance
            options as validated; a manifest records these.
        sampler: the registered :class:`~cbdm_core.interfaces.SamplerSpec` of ``settings.sampler``.
        guidance: the factory ``(model, scale, null_label[, schedule]) -> denoise_fn`` of
            ``settings.guidance_method`` with its options bound.
    """

    settings: "SamplerSettings"
    sampler: "SamplerSpec"
    guidance: Callable[..., Any]

    def steps_for(self, T: int) -> int:
        """The step count on a schedule of ``T`` steps (the settings', else the sampler's default)."""
        return steps_or_default(self.sampler, self.settings.steps, T)

    def with_steps(self, T: int) -> "ResolvedSampling":
        """A copy whose settings hold the step count used on a schedule of ``T`` steps."""
        return self.replace(self.settings.model_copy(update={"steps": self.steps_for(T)}))

    def replace(self, settings: "SamplerSettings") -> "ResolvedSampling":
        """A copy with ``settings`` (other numbers or job), which must name the same sampler,
        guidance and options: other names are resolved again at the edge."""
        if settings.names_key() != self.settings.names_key():
            raise ValueError("these settings name another sampler or guidance (or options) than the resolved "
                             "ones; resolve them with cbdm_core.sampling.api.resolve_sampling")
        return dataclasses.replace(self, settings=settings)
