"""Sampling with resolved objects: a :class:`~cbdm_core.interfaces.SamplerSpec` and a guidance
factory, never names (those are looked up at the edge, :mod:`cbdm_core.sampling.api`).

:func:`sample_resolved` is what sample folders (:mod:`.generate`) call for every batch;
:func:`cbdm_core.sampling.sample` looks its names up and runs the same steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import torch

from ..errors import CbdmError
from ..interfaces import COMMON_SAMPLER_OPTIONS, SamplerSpec, StepCallback, validate_options
from ..schedules import NoiseSchedule
from .cpu_choice import sampling_network
from .noise import GeneratorArg, check_generator
from .precision_mode import eps_in_x_dtype, precision_context

if TYPE_CHECKING:
    from .resolved import ResolvedSampling


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


def checked_call(model: Any, x_T: torch.Tensor, y: torch.Tensor, null_label: Optional[int],
                 generator: GeneratorArg, guidance: float) -> tuple[torch.Tensor, Optional[int], float]:
    """Check ``x_T``, the labels, the generators and the strength; the labels as long on
    ``x_T``'s device, the null label (default ``model.num_classes``) and ``w``."""
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
    w = float(guidance)
    if not w >= 0.0:
        raise CbdmError(f"guidance must be >= 0, got {guidance}")
    return y, null_label, w


def sampler_options(spec: SamplerSpec, sampler: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` checked against the sampler's options model (one-line error)."""
    return validate_options(getattr(spec, "options_model", None), options, f"sampler {sampler!r}")


# Guidance methods that only call the network: they may get its prepared CPU copy (cpu_choice.py);
# a plugin's guidance may reach into the network itself, so it gets the network as given.
PLAIN_GUIDANCE = ("cfg", "none")


def plain_network(model: Any, x_T: torch.Tensor, guidance_method: str, precision: str = "fp32") -> Any:
    """The network the sampler calls: the per-CPU prepared copy for plain guidance (its eps in
    ``x_T``'s dtype under ``precision`` bf16), else ``model``."""
    if guidance_method not in PLAIN_GUIDANCE:
        return model
    return eps_in_x_dtype(sampling_network(model, x_T), precision)


def guided(model: Any, schedule: NoiseSchedule, w: float, null_label: Optional[int],
           guide: Callable[..., Any]) -> Any:
    """The denoiser the sampler calls: ``model`` wrapped by the guidance factory ``guide``, or ``model``."""
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
            flag = {"eta": "--eta", "clip_denoised": "--clip/--no-clip"}[name]
            raise CbdmError(getattr(spec, "refusals", {}).get(name, f"the {sampler} sampler takes no {name} ({flag})"))
    return {k: v for k, v in given.items() if k in getattr(spec, "common_options", COMMON_SAMPLER_OPTIONS)}


def run_spec(spec: SamplerSpec, sampler: str, denoise_fn: Any, schedule: NoiseSchedule, x_T: torch.Tensor,
             y: torch.Tensor, *, steps: Optional[int], eta: float, clip_denoised: Optional[bool],
             generator: GeneratorArg, callback: Optional[StepCallback], options: dict[str, Any]) -> torch.Tensor:
    """Run the sampler ``spec`` (named ``sampler`` in messages) with checked ``options``."""
    if steps is None:
        steps = spec.default_steps
    common = _common_options(spec, sampler, {"eta": eta, "clip_denoised": clip_denoised})
    # no_grad also for third-party samplers that forget it (not inference_mode:
    # the caller may edit the result in place afterwards).
    with torch.no_grad():
        x0 = spec.run(denoise_fn, schedule, x_T, y, steps=steps, generator=generator, callback=callback,
                      **common, **options)
    # A plugin sampler's slip (one image for the batch) would otherwise be broadcast into every image.
    if not isinstance(x0, torch.Tensor) or x0.shape != x_T.shape or not x0.is_floating_point():
        got = f"shape {tuple(x0.shape)}, {x0.dtype}" if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise CbdmError(f"the {sampler} sampler returned {got} for noise of shape {tuple(x_T.shape)}: a sampler "
                        "must return float images shaped like its x_T")
    return x0


def sample_resolved(model: Any, schedule: NoiseSchedule, x_T: torch.Tensor, y: torch.Tensor,
                    sampling: "ResolvedSampling", *, generator: GeneratorArg = None,
                    null_label: Optional[int] = None, callback: Optional[StepCallback] = None) -> torch.Tensor:
    """:func:`cbdm_core.sampling.sample` with the settings of ``sampling`` (names already resolved):
    ``x_0`` (float, not quantised) from ``x_T``, the network run in ``settings.precision``."""
    st = sampling.settings
    y, null_label, w = checked_call(model, x_T, y, null_label, generator, st.guidance)
    options = sampler_options(sampling.sampler, st.sampler, st.sampler_options)
    # Inside the autocast: cpu_choice picks its bf16 copy by the autocast it is called under.
    with precision_context(st.precision, x_T.device):
        network = plain_network(model, x_T, st.guidance_method, st.precision)
        denoise_fn = guided(network, schedule, w, null_label, sampling.guidance)
        return run_spec(sampling.sampler, st.sampler, denoise_fn, schedule, x_T, y, steps=st.steps, eta=st.eta,
                        clip_denoised=st.clip_denoised, generator=generator, callback=callback, options=options)
