"""Turning a denoiser into the ``denoise_fn`` a sampler calls.

``cfg`` is classifier-free guidance (Ho & Salimans, 2022) in the parametrisation
the CBDM code uses: ``eps_hat = (1 + w) eps(x, y) - w eps(x, null)``, so w = 0
is plain conditional sampling.

A guidance is registered either as a plain factory ``(model, scale, null_label) ->
denoise_fn`` (no options) or as a :class:`~cbdm_core.interfaces.GuidanceSpec` with an
options model; :func:`guidance_factory` turns it and its options into a factory (the name is
looked up at the edge: :func:`cbdm_core.sampling.api.resolve_guidance`). A spec may
ask for the sampling schedule (``wants_schedule``) and be applied also at ``w = 0``
(``active_at_zero``: its strength is one of its own options).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import torch

from ..errors import CbdmError, ConfigError
from ..interfaces import DenoiseFn, GuidanceSpec, validate_options


def cfg_denoiser(model: Any, scale: float, null_label: int) -> DenoiseFn:
    """Classifier-free guidance with strength ``w = scale``.

    Conditional and unconditional predictions come from ONE forward pass over
    ``[x_t, x_t]`` with labels ``[y, null]`` (one larger batch beats two calls on
    a GPU). ``w = 0`` makes one plain conditional pass; rows whose label already
    is the null label return ``eps(x, null)`` exactly.
    """
    w = float(scale)
    if not w == w:  # NaN
        raise CbdmError("guidance scale must be a number, got NaN")
    null = int(null_label)

    def denoise(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if w == 0.0:
            return model(x_t, t, y)
        null_y = torch.full_like(y, null)
        eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null_y]))
        cond, uncond = eps.chunk(2)
        guided = (1.0 + w) * cond - w * uncond
        is_null = (y == null).view(-1, *([1] * (x_t.ndim - 1)))
        # (1 + w) e - w e is not bit-exact in floating point; use eps(x, null) itself.
        return torch.where(is_null, uncond, guided)

    denoise.guidance_scale = w  # type: ignore[attr-defined]  # for logs and tests
    return denoise


def unguided_denoiser(model: Any, scale: float = 0.0, null_label: int | None = None) -> DenoiseFn:
    """The model called as is: ``model(x_t, t, y)`` (unconditional or unguided models).

    ``scale`` must be 0: there is no unconditional branch to guide with.
    """
    if float(scale) != 0.0:
        raise CbdmError(f"guidance 'none' cannot apply a guidance scale ({scale}); use 'cfg' or scale 0")

    def denoise(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model(x_t, t, y)

    return denoise


def guidance_factory(obj: Any, name: str, options: Optional[Mapping[str, Any]] = None) -> tuple[
        Callable[..., DenoiseFn], dict[str, Any]]:
    """The factory ``(model, scale, null_label) -> denoise_fn`` of the registered guidance ``obj``
    (named ``name``) with ``options`` bound, and the validated options (only those given,
    coerced to their types). The name is looked up at the edge
    (:func:`cbdm_core.sampling.api.resolve_guidance`); this only checks the options.

    Raises a one-line :class:`CbdmError` for an unknown or ill-typed option, or any option given
    to a guidance registered without an options model.
    """
    given = dict(options or {})
    if isinstance(obj, GuidanceSpec):
        opts = validate_options(obj.options_model, given, f"guidance {name!r}")
        return _bind(obj, opts), opts
    if given:
        raise ConfigError(f"guidance {name!r} takes no options; got {', '.join(map(repr, given))}")
    return obj, {}


def check_guidance_name(name: str) -> None:
    """Refuse the ``name:arg`` spelling (guidance options are named: ``-G KEY=VALUE``)."""
    if ":" in name:
        base, _, arg = name.partition(":")
        raise ConfigError(f"guidance {name!r}: a guidance takes named options, not an argument after ':'; "
                          f"write {base!r} with -G KEY={arg} (guidance_options)")


def _bind(spec: GuidanceSpec, opts: dict[str, Any]) -> Callable[..., DenoiseFn]:
    """``factory(model, scale, null_label, schedule=None)`` calling ``spec.build`` with ``opts``
    (and the schedule when the spec wants it); ``factory.active_at_zero`` mirrors the spec."""
    build = spec.build

    def factory(model: Any, scale: float, null_label: Optional[int], schedule: Any = None) -> DenoiseFn:
        if spec.wants_schedule:
            if schedule is None:
                raise CbdmError("this guidance needs the noise schedule (abar_t); pass schedule=")
            return build(model, scale, null_label, schedule=schedule, **opts)
        return build(model, scale, null_label, **opts)

    factory.active_at_zero = bool(spec.active_at_zero)  # type: ignore[attr-defined]
    return factory
