"""``sample``: the one entry point from a trained denoiser to images, and the edge of the
sampling layer: the only sampling module that looks sampler and guidance names up
(:func:`resolve_sampling`, :func:`resolve_guidance`); the layers below receive the objects
(:class:`~cbdm_core.sampling.resolved.ResolvedSampling`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import torch

from ..interfaces import DenoiseFn, SamplerSpec, StepCallback
from ..schedules import NoiseSchedule
from .core import checked_call, guided, plain_network, run_spec, sampler_options as checked_options
from .guidance import check_guidance_name, guidance_factory
from .noise import GeneratorArg
from .precision_mode import precision_context
from .resolved import ResolvedSampling, steps_or_default

if TYPE_CHECKING:
    from .settings import SamplerSettings



def _lookup(kind: str, name: str) -> Any:
    # Imported here: the registry loads every plugin, and the plugins import this package.
    from ..registry import lookup

    return lookup(kind, name)


def resolve_guidance(name: str, options: Optional[Mapping[str, Any]] = None) -> tuple[Callable[..., DenoiseFn],
                                                                                       dict[str, Any]]:
    """The factory ``(model, scale, null_label) -> denoise_fn`` registered as ``name`` with
    ``options`` bound, and the validated options (only those given, coerced to their types).

    Raises a one-line :class:`~cbdm_core.errors.CbdmError` for an unknown name, a ``name:arg``
    spelling (guidance options are named: ``-G KEY=VALUE``), an unknown or ill-typed option, or
    any option given to a guidance registered without an options model.
    """
    check_guidance_name(name)
    return guidance_factory(_lookup("guidance", name), name, options)


def resolve_sampling(settings: "SamplerSettings") -> ResolvedSampling:
    """``settings``' sampler looked up and its guidance resolved against the registry: the one
    check of a sampling job's names (one-line :class:`~cbdm_core.errors.CbdmError`), done once
    at the edge. Its ``settings`` are a copy with the guidance options as validated."""
    spec = _lookup("sampler", settings.sampler)
    guide, options = resolve_guidance(settings.guidance_method, settings.guidance_options)
    return ResolvedSampling(settings.model_copy(update={"guidance_options": options}), spec, guide)


def resolve_steps(sampler: str, steps: Optional[int], T: int) -> int:
    """The step count actually used: ``steps``, or the default of the sampler named ``sampler``
    capped at ``T`` (a sampler whose default is ``None``, ``ddpm``, runs all ``T`` steps)."""
    if steps is not None:
        return int(steps)
    return steps_or_default(_lookup("sampler", sampler), steps, T)


def sample(model: Any, schedule: NoiseSchedule, x_T: torch.Tensor, y: torch.Tensor, *,
           sampler: str = "ddim", steps: Optional[int] = None, eta: float = 0.0, guidance: float = 0.0,
           guidance_method: str = "cfg", guidance_options: Optional[Mapping[str, Any]] = None,
           clip_denoised: Optional[bool] = None, generator: GeneratorArg = None,
           null_label: Optional[int] = None, callback: Optional[StepCallback] = None,
           precision: str = "fp32", **sampler_options: Any) -> torch.Tensor:
    """Denoise ``x_T`` into ``x_0`` (float, not quantised) with a registered sampler.

    Args:
        model: denoiser ``model(x_t, t, y) -> eps`` with ``model.num_classes``
            (label ``num_classes`` is the null label). Put it in eval mode first.
        schedule: the noise schedule the model was trained with.
        x_T: starting noise ``[B, ...]``; sampling runs on its device and dtype.
        y: int labels ``[B]`` in ``0..num_classes`` (``num_classes`` = unconditional).
        sampler: registered sampler name (``ddim``, ``ddpm``, ...).
        steps: number of steps; ``None`` = the sampler's default (ddim: 100,
            ddpm: all T). ddpm rejects any value other than T.
        eta: DDIM noise (0 deterministic); ddpm takes none.
        guidance: guidance strength w >= 0 (0 = plain conditional).
        guidance_method: registered guidance (kind ``guidance``) used when w > 0: ``cfg``
            (classifier-free, the default), ``none`` (the model as is), or a plugin's.
        guidance_options: options of that guidance, checked against its ``options_model``
            (:class:`~cbdm_core.interfaces.GuidanceSpec`); a guidance without one takes none.
        clip_denoised: clamp predicted x_0 to [-1, 1]; ``None`` = sampler default
            (ddpm: True, ddim: False).
        generator: ``None``, a ``torch.Generator``, or a list with one generator
            per sample (see :func:`cbdm_core.sampling.sample_generators`).
        null_label: the unconditional label; default ``model.num_classes``.
        callback: ``callback(step_index, num_steps, x)`` after each step.
        precision: ``fp32``, or ``bf16``: the network under bf16 autocast on ``x_T``'s device
            (the x_t updates stay in ``x_T``'s dtype).
        **sampler_options: sampler specific, e.g. ``var_type`` (ddpm) or ``spacing`` (ddim).
    """
    y, null_label, w = checked_call(model, x_T, y, null_label, generator, guidance)
    spec: SamplerSpec = _lookup("sampler", sampler)
    options = checked_options(spec, sampler, sampler_options)
    guide, _ = resolve_guidance(guidance_method, guidance_options)  # a bad name or option fails also at w = 0
    with precision_context(precision, x_T.device):
        denoise_fn = guided(plain_network(model, x_T, guidance_method, precision), schedule, w, null_label, guide)
        return run_spec(spec, sampler, denoise_fn, schedule, x_T, y, steps=steps, eta=eta,
                        clip_denoised=clip_denoised, generator=generator, callback=callback, options=options)
