"""``sample``: the one entry point from a trained denoiser to images."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from ..errors import CbdmError
from ..interfaces import COMMON_SAMPLER_OPTIONS, SamplerSpec, StepCallback, validate_options
from ..schedules import NoiseSchedule
from .cpu_choice import sampling_network
from .guidance import resolve_guidance
from .noise import GeneratorArg, check_generator


# Guidance methods that only call the network: they may get its prepared CPU copy (cpu_choice.py).
_PLAIN_GUIDANCE = ("cfg", "none")


def _lookup(kind: str, name: str) -> Any:
    # Imported here: the registry loads every plugin, and the plugins import this package.
    from ..registry import lookup

    return lookup(kind, name)


def _check_labels(y: torch.Tensor, batch: int, num_classes: Optional[int], null_label: Optional[int]) -> None:
    if y.ndim != 1 or y.shape[0] != batch:
        raise CbdmError(f"labels must have shape [{batch}] to match x_T, got {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise CbdmError(f"labels must be integer class indices, got dtype {y.dtype}")
    if num_classes is None or y.numel() == 0:
        return
    bad = (y < 0) | (y > num_classes)
    if null_label is not None:
        bad &= y != null_label
    if bool(bad.any()):
        first = int(y[bad][0])
        raise CbdmError(f"label {first} is out of range: labels must lie in 0..{num_classes - 1}, "
                        f"or be the null label {num_classes if null_label is None else null_label}")


def _checked_inputs(model: Any, x_T: torch.Tensor, y: torch.Tensor, null_label: Optional[int],
                    generator: GeneratorArg) -> tuple[torch.Tensor, Optional[int]]:
    """Check ``x_T``, the labels and the generators; the labels as long on ``x_T``'s device,
    and the null label (default ``model.num_classes``)."""
    if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point():
        raise CbdmError("x_T must be a floating-point tensor [B, ...]")
    if x_T.ndim < 2:
        raise CbdmError(f"x_T must be batched, shape [B, ...], got {tuple(x_T.shape)}")
    batch = int(x_T.shape[0])
    y = torch.as_tensor(y)
    num_classes = getattr(model, "num_classes", None)
    num_classes = None if num_classes is None else int(num_classes)
    if null_label is None:
        null_label = num_classes
    _check_labels(y, batch, num_classes, null_label)
    y = y.to(device=x_T.device, dtype=torch.long)
    check_generator(generator, batch)
    return y, null_label


def _guided(model: Any, schedule: NoiseSchedule, w: float, null_label: Optional[int], guidance_method: str,
            guidance_options: Optional[Mapping[str, Any]]) -> Any:
    """The denoiser the sampler calls: ``model`` wrapped by its guidance, or ``model`` itself."""
    guide, _ = resolve_guidance(guidance_method, guidance_options)  # a bad name or option fails also at w = 0
    # A GuidanceSpec's factory takes the schedule; a plain registered callable takes 3 arguments.
    extra = {"schedule": schedule} if hasattr(guide, "active_at_zero") else {}
    if getattr(guide, "active_at_zero", False):  # its strength is its own option: applied at any w
        return guide(model, w, None if null_label is None else int(null_label), **extra)
    if w > 0.0:
        if null_label is None:
            raise CbdmError("guidance needs a null label: the model has no num_classes; pass null_label=")
        return guide(model, w, int(null_label), **extra)
    return model


def _common_options(spec: SamplerSpec, sampler: str, given: dict[str, Any]) -> dict[str, Any]:
    """The common options (``eta``, ``clip_denoised``) ``spec`` takes; one it does not take
    but the caller set is refused with the spec's message."""
    for name, value in given.items():
        if name in getattr(spec, "common_options", COMMON_SAMPLER_OPTIONS):  # a duck-typed spec: all
            continue
        unset = COMMON_SAMPLER_OPTIONS[name]
        # float(): a NaN eta is "set" (NaN != 0), as the samplers' own checks treated it.
        if (value is not None) if unset is None else float(value) != unset:
            raise CbdmError(getattr(spec, "refusals", {}).get(name, f"the {sampler} sampler takes no {name}"))
    return {k: v for k, v in given.items() if k in getattr(spec, "common_options", COMMON_SAMPLER_OPTIONS)}


def sample(model: Any, schedule: NoiseSchedule, x_T: torch.Tensor, y: torch.Tensor, *,
           sampler: str = "ddim", steps: Optional[int] = None, eta: float = 0.0, guidance: float = 0.0,
           guidance_method: str = "cfg", guidance_options: Optional[Mapping[str, Any]] = None,
           clip_denoised: Optional[bool] = None, generator: GeneratorArg = None,
           null_label: Optional[int] = None, callback: Optional[StepCallback] = None,
           **sampler_options: Any) -> torch.Tensor:
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
        **sampler_options: sampler specific, e.g. ``var_type`` (ddpm) or ``spacing`` (ddim).
    """
    y, null_label = _checked_inputs(model, x_T, y, null_label, generator)
    w = float(guidance)
    if not w >= 0.0:
        raise CbdmError(f"guidance must be >= 0, got {guidance}")
    spec: SamplerSpec = _lookup("sampler", sampler)
    sampler_options = validate_options(getattr(spec, "options_model", None), sampler_options, f"sampler {sampler!r}")
    if guidance_method in _PLAIN_GUIDANCE:  # a plugin's guidance may reach into the network itself
        model = sampling_network(model, x_T)
    denoise_fn = _guided(model, schedule, w, null_label, guidance_method, guidance_options)
    if steps is None:
        steps = spec.default_steps
    common = _common_options(spec, sampler, {"eta": eta, "clip_denoised": clip_denoised})
    # no_grad also for third-party samplers that forget it (not inference_mode:
    # the caller may edit the result in place afterwards).
    with torch.no_grad():
        return spec.run(denoise_fn, schedule, x_T, y, steps=steps, generator=generator, callback=callback,
                        **common, **sampler_options)
