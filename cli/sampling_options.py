"""Click options generated from the sampling settings models, and the models built back from them.

``cbdm sample`` and ``cbdm sweep`` take the fields of
:class:`~cbdm_core.sampling.settings.SamplerSettings` and
:class:`~cbdm_core.sampling.settings.SampleJob` as options: name, type, default and help come
from the model (a field's ``description`` is its help), so a new setting is one field, not
one field plus a hand-copied option per command. :data:`FLAGS` keeps the option names that
differ from the field names (short flags, ``--clip/--no-clip``); a bad value is refused by
the model, once, in one line naming the flag (:func:`flag_error`).
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import click
from pydantic import BaseModel, ValidationError

from cbdm_core.errors import CbdmError
from cbdm_core.sampling.settings import MAX_SAMPLES, SampleJob, SamplerSettings, SamplingSettings

from .overrides import parse_key_values

# field -> the option's names where they are not just --field-name (kept exactly as they were).
FLAGS: dict[str, tuple[str, ...]] = {
    "guidance": ("--guidance", "-w"),
    "guidance_options": ("--guidance-option", "-G"),
    "sampler_options": ("--sampler-option", "-S"),
    "clip_denoised": ("--clip/--no-clip",),
    "num": ("--num", "--num-samples", "-n"),
    "ema": ("--ema/--no-ema",),
    "out": ("--out", "-o"),
}

SAMPLER_FIELDS: tuple[str, ...] = tuple(SamplerSettings.model_fields)
JOB_FIELDS: tuple[str, ...] = tuple(SampleJob.model_fields)


def _field(name: str):
    return {**SamplerSettings.model_fields, **SampleJob.model_fields}[name]


def flag_of(name: str, flags: Optional[Mapping[str, Sequence[str]]] = None) -> str:
    """The long option name of field ``name`` (``--clip`` for ``clip_denoised``)."""
    names = (flags or {}).get(name) or FLAGS.get(name) or (f"--{name.replace('_', '-')}",)
    return names[0].split("/")[0]


def _base_type(annotation: Any) -> Any:
    """``Optional[int]`` -> ``int``; ``dict[...]`` -> ``dict``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        return _base_type(args[0])
    return typing.get_origin(annotation) or annotation


def _option(name: str, *, flags: Sequence[str], default: Any, help: Optional[str]) -> Callable:
    """One click option for field ``name`` (its parameter is called ``name``)."""
    field = _field(name)
    kind = _base_type(field.annotation)
    help = help if help is not None else field.description
    if kind is dict:  # KEY=VALUE, repeatable; parsed as YAML by settings_from_options
        return click.option(*flags, name, multiple=True, metavar="KEY=VALUE", help=help)
    if kind is bool and "/" in flags[0]:
        return click.option(*flags, name, default=default, show_default=default is not None, help=help)
    if kind is typing.Literal:  # a closed set of words: click lists them in --help and refuses others
        return click.option(*flags, name, type=click.Choice(typing.get_args(field.annotation)), default=default,
                            show_default=default is not None, help=help)
    click_type = click.Path(path_type=Path) if kind is Path else {int: int, float: float, str: str}.get(kind)
    return click.option(*flags, name, type=click_type, default=default, show_default=default is not None,
                        help=help)


def sampling_options(fields: Sequence[str], *, defaults: Optional[Mapping[str, Any]] = None,
                     helps: Optional[Mapping[str, str]] = None,
                     flags: Optional[Mapping[str, Sequence[str]]] = None) -> Callable:
    """A decorator adding one click option per field of ``fields`` (sampler and job fields),
    in that order; ``defaults``, ``helps`` and ``flags`` override the model's per command."""
    defaults, helps, flags = dict(defaults or {}), dict(helps or {}), dict(flags or {})

    def decorate(f: Callable) -> Callable:
        for name in reversed(fields):
            field = _field(name)
            default = defaults[name] if name in defaults else (None if field.default_factory else field.default)
            names = tuple(flags.get(name) or FLAGS.get(name) or (f"--{name.replace('_', '-')}",))
            f = _option(name, flags=names, default=default, help=helps.get(name))(f)
        return f

    return decorate


def flag_error(exc: ValidationError, flags: Optional[Mapping[str, Sequence[str]]] = None) -> str:
    """One line for the first failing field, named by its option: ``--num must be positive, got 0``."""
    err = exc.errors()[0]
    name = str(err["loc"][0]) if err["loc"] else ""
    flag, value, ctx, kind = flag_of(name, flags), err.get("input"), err.get("ctx") or {}, err["type"]
    if kind == "greater_than_equal" and ctx.get("ge") == 1:
        return f"{flag} must be positive, got {value}"
    if kind == "greater_than_equal":
        return f"{flag} must be >= {ctx['ge']}, got {value}"
    if kind == "less_than_equal" and name == "num":
        return f"{flag} {value} is more than the largest sample set ({MAX_SAMPLES} images)"
    if kind == "less_than_equal":
        return f"{flag} must be <= {ctx['le']}, got {value}"
    if kind == "finite_number":
        return f"{flag} must be a finite number, got {value}"
    return f"{flag}: {err['msg']}"


def checked_value(settings: BaseModel, name: str, value: Any,
                  flags: Optional[Mapping[str, Sequence[str]]] = None) -> None:
    """``value`` checked as field ``name`` of ``settings`` (another point of a sweep), or one
    ``Error:`` line naming the flag."""
    try:
        setattr(settings.model_copy(), name, value)  # validate_assignment: the field's bounds apply
    except ValidationError as exc:
        raise CbdmError(flag_error(exc, flags)) from None


def _values(options: dict[str, Any], fields: Sequence[str], flags: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Pop ``fields`` from the click ``options``; KEY=VALUE lists parsed into dicts."""
    values = {}
    for name in fields:
        if name not in options:
            continue
        value = options.pop(name)
        if _base_type(_field(name).annotation) is dict:
            value = parse_key_values(tuple(value or ()), flag_of(name, flags))
        values[name] = value
    return values


# Fields whose None is a value of its own (not "the model's default").
_NONE_OK = frozenset({"steps", "clip_denoised", "seed", "num", "out"})


def _build(model: type[BaseModel], values: dict[str, Any], flags: Mapping[str, Sequence[str]]) -> Any:
    try:
        return model(**{k: v for k, v in values.items() if v is not None or k in _NONE_OK})
    except ValidationError as exc:
        raise CbdmError(flag_error(exc, flags)) from None


def settings_from_options(options: dict[str, Any], *, flags: Optional[Mapping[str, Sequence[str]]] = None,
                          **fixed: Any) -> tuple[SamplerSettings, SampleJob]:
    """The validated sampler settings and job from the generated options (popped from
    ``options``), with ``fixed`` values set by the command; one ``Error:`` line naming the
    flag for a bad value."""
    flags = dict(flags or {})
    values = {**_values(options, SAMPLER_FIELDS + JOB_FIELDS, flags), **fixed}
    how = _build(SamplerSettings, {k: v for k, v in values.items() if k in SAMPLER_FIELDS}, flags)
    job = _build(SampleJob, {k: v for k, v in values.items() if k in JOB_FIELDS}, flags)
    return how, job


def sampling_settings_from_options(options: dict[str, Any], *,
                                   flags: Optional[Mapping[str, Sequence[str]]] = None,
                                   **fixed: Any) -> SamplingSettings:
    """:func:`settings_from_options` as one flat :class:`SamplingSettings` (sweeps)."""
    how, job = settings_from_options(options, flags=flags, **fixed)
    return SamplingSettings.of(how, job)
