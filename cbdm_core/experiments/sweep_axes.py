"""The axes of a sampling sweep: which setting each point changes, resolved and checked.

An axis is ``NAME=VALUES`` (``cbdm sweep RUN --axis NAME=VALUES``), NAME one of

* ``guidance`` (also ``w``): the guidance strength w, as ``--grid``;
* ``steps`` or ``eta``: the sampler's steps or DDIM noise;
* ``GUIDANCE.OPTION``: a numeric option of a registered guidance (``classifier.scale``,
  ``minority.scale``, ``self-minority.scale``, ...); ``guidance.OPTION`` names the chosen one;
* ``SAMPLER.OPTION``: a numeric option of a registered sampler (``ddpm.boost_gamma``,
  ``ddim.skip``, ...); ``sampler.OPTION`` names the chosen one.

The guidance or sampler an axis names is adopted when ``--guidance-method`` / ``--sampler``
were left at their defaults, and must match them when they were given. Every point's settings
are an ordinary :class:`~cbdm_core.sampling.settings.SamplingSettings`, so each point is a
``cbdm sample`` folder whose manifest records its value.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from ..errors import CbdmError
from ..sampling.settings import SamplingSettings

GUIDANCE = "guidance"  # the name of the w axis (sweep.json's ``parameter`` before axes existed)
MAX_AXES = 2
MAX_POINTS = 1000
_TOP_LEVEL = {"w": GUIDANCE, GUIDANCE: GUIDANCE, "steps": "steps", "eta": "eta"}


@dataclass(frozen=True)
class Axis:
    """One swept setting: ``kind`` is ``guidance``, ``steps``, ``eta``, ``guidance_option`` or
    ``sampler_option`` (then ``key`` is the option); ``name`` is its canonical label."""

    name: str
    kind: str
    values: tuple[float, ...]
    key: str = ""
    integer: bool = False

    def typed(self, value: float) -> Any:
        return int(value) if self.integer else float(value)


def parse_grid(text: str) -> list[float]:
    """``"0:2:0.2"`` (start:stop:step, stop included) or ``"0,0.5,1"`` -> sorted unique values.

    Grid values are rounded to 10 decimals so 0.1+0.2 style drift does not create
    near-duplicate points or odd folder names.
    """
    text = str(text).strip()
    if not text:
        raise CbdmError("empty grid: give start:stop:step (e.g. 0:2:0.2) or a list (e.g. 0,0.8,1.6)")
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if not all(math.isfinite(p) for p in parts):
                raise CbdmError(f"grid {text!r}: start, stop and step must be finite numbers")
            if step <= 0 or stop < start:
                raise CbdmError(f"grid {text!r}: need start <= stop and a positive step")
            span = (stop - start) / step  # may overflow to inf (0:1e308:1e-300): count it as a float
            if not span < MAX_POINTS:
                raise CbdmError(f"grid {text!r} has {span + 1:.3g} points (at most {MAX_POINTS})")
            n = int(math.floor(span + 1e-9)) + 1
            values = [start + i * step for i in range(n)]
        else:
            values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise CbdmError(f"cannot read grid {text!r}: give start:stop:step (e.g. 0:2:0.2) "
                        "or comma-separated numbers") from None
    values = sorted({round(v, 10) for v in values})
    if not values or not all(math.isfinite(v) for v in values):
        raise CbdmError(f"grid {text!r} has no finite values")
    return values


def parse_axis(text: str) -> tuple[str, list[float]]:
    """``"classifier.scale=0:4:1"`` -> ``("classifier.scale", [0, 1, 2, 3, 4])``."""
    name, sep, values = str(text).partition("=")
    if not sep or not name.strip():
        raise CbdmError(f"--axis takes NAME=VALUES (e.g. classifier.scale=0,1,2 or ddpm.boost_gamma=1:4:1), "
                        f"got {text!r}")
    return name.strip(), parse_grid(values)


def _options_model(kind: str, name: str) -> Optional[type]:
    from ..registry import lookup

    return getattr(lookup(kind, name), "options_model", None)


def _owner(prefix: str, sampling: SamplingSettings, given: set[str]) -> tuple[str, str]:
    """``("guidance" | "sampler", registered name)`` of an axis prefix, checked against the
    chosen guidance and sampler (``given``: which of the two the user chose explicitly)."""
    from ..registry import get_registry

    registry = get_registry()
    chosen = {"guidance": sampling.guidance_method, "sampler": sampling.sampler}
    if prefix in chosen:
        return prefix, chosen[prefix]
    for kind, flag, token in (("guidance", "--guidance-method", "guidance_method"), ("sampler", "--sampler", "sampler")):
        if prefix not in registry.names(kind):
            continue
        if prefix != chosen[kind] and token in given:
            raise CbdmError(f"--axis {prefix}.*: {prefix!r} is a {kind}, but the sweep samples with {kind} "
                            f"{chosen[kind]!r} ({flag} or another --axis); sweep {chosen[kind]}.OPTION")
        given.add(token)  # adopted: a later axis naming another one is refused, not silently switched
        return kind, prefix
    raise CbdmError(f"--axis {prefix}.*: {prefix!r} is neither a guidance ({', '.join(registry.names('guidance'))}) "
                    f"nor a sampler ({', '.join(registry.names('sampler'))})")


def _option_axis(name: str, values: list[float], sampling: SamplingSettings,
                 given: set[str]) -> tuple[Axis, SamplingSettings]:
    """The axis of ``PREFIX.OPTION``, and ``sampling`` with the guidance or sampler it implies."""
    from ..methods.options import describe_options

    prefix, _, key = name.rpartition(".")
    kind, owner = _owner(prefix, sampling, given)
    model = _options_model(kind, owner)
    rows = {r["name"]: r for r in describe_options(model)} if model is not None else {}
    if key not in rows:
        have = f"its options: {', '.join(rows)}" if rows else "it has no options"
        hint = " (sweep its strength w with --grid)" if kind == "guidance" and not rows else ""
        raise CbdmError(f"--axis {name}: {kind} {owner!r} has no option {key!r}; {have}{hint}")
    row = rows[key]
    if not row["numeric"]:
        raise CbdmError(f"--axis {name}: option {key} of {kind} {owner!r} is {row['type']}, not a number; "
                        "only numeric options can be swept")
    field = "guidance_method" if kind == "guidance" else "sampler"
    sampling = sampling.model_copy(update={field: owner})
    integer = row["type"].startswith("int")
    return Axis(f"{owner}.{key}", f"{kind}_option", tuple(values), key, integer), sampling


def resolve_axes(specs: Sequence[tuple[str, Sequence[float]]], sampling: SamplingSettings, *,
                 given: Sequence[str] = ()) -> tuple[list[Axis], SamplingSettings]:
    """The axes of ``specs`` (``(NAME, values)`` as :func:`parse_axis` gives them) and the base
    settings with the guidance or sampler they name. ``given``: what the user set explicitly,
    ``guidance_method``, ``sampler``, ``steps``, ``eta``, ``guidance_option:KEY`` and
    ``sampler_option:KEY`` (an axis may not also be fixed by a flag). One-line errors for
    anything that cannot be swept."""
    axes: list[Axis] = []
    fixed = set(given)
    for name, values in specs:
        if name in _TOP_LEVEL:
            label = _TOP_LEVEL[name]
            integer = label == "steps"
            axis = Axis(label, label, tuple(values), integer=integer)
        elif "." in name:
            axis, sampling = _option_axis(name, list(values), sampling, fixed)
        else:
            raise CbdmError(f"--axis {name}: name w (guidance strength), steps, eta, GUIDANCE.OPTION (e.g. "
                            "classifier.scale) or SAMPLER.OPTION (e.g. ddpm.boost_gamma)")
        _check_values(axis)
        if any(a.name == axis.name for a in axes):
            raise CbdmError(f"--axis {axis.name} is given twice")
        if axis.kind in fixed or f"{axis.kind}:{axis.key}" in fixed:
            flag = {"steps": "--steps", "eta": "--eta"}.get(axis.kind) or (
                f"-G {axis.key}" if axis.kind == "guidance_option" else f"-S {axis.key}")
            raise CbdmError(f"--axis {axis.name} is swept; do not also give {flag}")
        axes.append(axis)
    varying = [a for a in axes if len(a.values) > 1]
    if len(varying) > MAX_AXES:
        raise CbdmError(f"a sweep varies at most {MAX_AXES} settings at once (a grid of two); got "
                        f"{', '.join(a.name for a in varying)}")
    return axes, sampling


def _check_values(axis: Axis) -> None:
    if not axis.values:
        raise CbdmError(f"--axis {axis.name} has no values")
    if axis.integer and any(v != int(v) for v in axis.values):
        raise CbdmError(f"--axis {axis.name} takes whole numbers, got {', '.join(f'{v:g}' for v in axis.values)}")
    if axis.kind in ("guidance", "eta") and any(v < 0 for v in axis.values):
        raise CbdmError(f"--axis {axis.name} values must be >= 0")
    if axis.kind == "steps" and any(v < 1 for v in axis.values):
        raise CbdmError("--axis steps values must be >= 1")


def combinations(axes: Sequence[Axis]) -> list[tuple[float, ...]]:
    """Every point of the grid, the first axis varying slowest."""
    return list(itertools.product(*[a.values for a in axes]))


def point_settings(sampling: SamplingSettings, axes: Sequence[Axis], combo: Sequence[float]) -> SamplingSettings:
    """``sampling`` with one point's values set."""
    update: dict[str, Any] = {"guidance_options": dict(sampling.guidance_options),
                              "sampler_options": dict(sampling.sampler_options)}
    for axis, value in zip(axes, combo):
        if axis.kind == "guidance_option":
            update["guidance_options"][axis.key] = axis.typed(value)
        elif axis.kind == "sampler_option":
            update["sampler_options"][axis.key] = axis.typed(value)
        else:
            update[axis.kind] = axis.typed(value)
    return sampling.model_copy(update=update)


def folder_name(axes: Sequence[Axis], combo: Sequence[float]) -> str:
    """``w1.5`` for the w axis alone (the folder names of sweeps before axes existed), else
    ``<name>=<value>`` parts joined by ``_`` (``w1_classifier.scale=2``)."""
    import re

    parts = []
    for axis, value in zip(axes, combo):
        label = "w" if axis.kind == "guidance" else re.sub(r"[^A-Za-z0-9.+-]", "_", axis.name) + "="
        parts.append(f"{label}{value:g}")
    return "_".join(parts)


def point_label(axes: Sequence[Axis], combo: Sequence[float]) -> str:
    """``classifier.scale = 2, guidance = 1`` (status lines and errors)."""
    return ", ".join(f"{a.name} = {v:g}" for a, v in zip(axes, combo))


def check_points(run: Any, axes: Sequence[Axis], combos: Sequence[tuple[float, ...]],
                 settings: Sequence[SamplingSettings]) -> list[Any]:
    """Every point's settings, their names resolved (a
    :class:`~cbdm_core.sampling.resolved.ResolvedSampling` per point, its steps set) and checked
    by the sampler and guidance themselves on a dummy denoiser (bad option values, a guidance
    that refuses w > 0, ...) before any sampling."""
    from ..sampling.api import resolve_sampling
    from ..sampling.preflight import preflight

    resolved = []

    for combo, st in zip(combos, settings):
        if st.guidance > 0 and not run.trained_with_label_dropout:
            raise CbdmError(f"{run.checkpoint} was trained without label dropout (p_uncond = 0), so guidance "
                            "w > 0 has no unconditional prediction to use; sweep w = 0 only or train with "
                            "--p-uncond 0.1")
        try:
            how = resolve_sampling(st).with_steps(run.schedule.num_timesteps)
            preflight(run, how)
        except CbdmError as exc:
            raise CbdmError(f"sweep point {point_label(axes, combo)}: {exc}") from None
        resolved.append(how)
    return resolved
