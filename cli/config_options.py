"""``cbdm train`` options that set one training config field, generated from the config model.

:data:`TRAIN_FIELDS` is the one table of them: option -> config path (and its help, as the
config models carry none). Each option's type (int, float, a path, a choice for a ``Literal``)
comes from the field of :class:`~cbdm_core.config.TrainConfig` at that path, and
:func:`config_values` turns the given options into the config overrides, so the option list
and the overrides cannot drift apart.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple, Optional, Sequence

import click
from pydantic import BaseModel

from .overrides import set_dotted


class ConfigFlag(NamedTuple):
    path: str  # dotted config field
    help: Optional[str] = None
    resumable: bool = False  # may change on --resume
    flag: Optional[str] = None  # the option name, where it is not --<param with dashes>


TRAIN_FIELDS: dict[str, ConfigFlag] = {
    "dataset": ConfigFlag("data.dataset", "Dataset name (see `cbdm plugins`)."),
    "data_root": ConfigFlag("data.root", "Folder holding the dataset files."),
    "imb_factor": ConfigFlag("data.imb_factor", "Long-tail imbalance factor in (0, 1]."),
    "backbone": ConfigFlag("model.backbone", "Denoiser backbone name."),
    "schedule": ConfigFlag("diffusion.schedule", "Noise schedule name."),
    "T": ConfigFlag("diffusion.T", "Number of diffusion steps.", flag="--T"),
    "p_uncond": ConfigFlag("objective.p_uncond", "Label-dropout probability for guidance."),
    "augment": ConfigFlag("data.augment", "Augmentation name."),
    "augment_p": ConfigFlag("data.augment_p", "Augmentation probability."),
    "resample": ConfigFlag("data.resample", "Class re-sampling baseline."),
    "steps": ConfigFlag("optim.steps", "Total training steps.", resumable=True),
    "batch_size": ConfigFlag("optim.batch_size"),
    "lr": ConfigFlag("optim.lr"),
    "warmup": ConfigFlag("optim.warmup", "Linear learning-rate warm-up steps."),
    "ema_decay": ConfigFlag("optim.ema_decay"),
    "seed": ConfigFlag("seed"),
    "device": ConfigFlag("device", "auto, cpu, cuda or cuda:N.", resumable=True),
    "log_every": ConfigFlag("log_every", resumable=True),
    "sample_every": ConfigFlag("sample_every", "Steps between sample grids (0: only at the end).", resumable=True),
    "ckpt_every": ConfigFlag("ckpt_every", "Steps between checkpoints (0: by time only).", resumable=True),
    "ckpt_every_minutes": ConfigFlag("ckpt_every_minutes", "Wall-clock minutes between checkpoints (default 15; "
                                                           "0: off).", resumable=True),
    "keep_last": ConfigFlag("keep_last", "Checkpoints to keep.", resumable=True),
    "evaluate_every": ConfigFlag("evaluate.every", "Steps between FID/KID of a small sample set in classifier "
                                                   "features (0: off).", resumable=True),
    "evaluate_num": ConfigFlag("evaluate.num", "Samples per evaluation (default 500).", resumable=True),
    "evaluate_classifier": ConfigFlag("evaluate.classifier", "Feature classifier file for --evaluate-every "
                                                             "(default: trained once into the run folder).",
                                      resumable=True),
    "init_from": ConfigFlag("init_from", "Start from a pre-trained run or checkpoint (fine-tuning; EMA weights)."),
}


def _field_type(path: str) -> Any:
    """The annotation of the :class:`TrainConfig` field at dotted ``path``, without ``Optional``."""
    from cbdm_core.config import TrainConfig

    model: type[BaseModel] = TrainConfig
    *parents, last = path.split(".")
    for part in parents:
        model = model.model_fields[part].annotation
    annotation = model.model_fields[last].annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) is typing.Union and len(args) == 1 else annotation


def _click_type(path: str) -> Any:
    kind = _field_type(path)
    if typing.get_origin(kind) is Literal:
        return click.Choice([str(v) for v in typing.get_args(kind)])
    if kind is Path:
        return click.Path(path_type=Path)
    return kind if kind in (int, float, str) else None


def config_options(params: Sequence[str]) -> Callable:
    """A decorator adding the options of ``params`` (keys of :data:`TRAIN_FIELDS`), in order."""

    def decorate(f: Callable) -> Callable:
        for param in reversed(params):
            spec = TRAIN_FIELDS[param]
            flag = spec.flag or f"--{param.replace('_', '-')}"
            f = click.option(flag, param, type=_click_type(spec.path), help=spec.help)(f)
        return f

    return decorate


def config_values(data: dict[str, Any], opts: dict[str, Any], *, resumable_only: bool = False) -> None:
    """Set into ``data`` every given option of :data:`TRAIN_FIELDS` (paths as strings)."""
    for param, spec in TRAIN_FIELDS.items():
        if resumable_only and not spec.resumable:
            continue
        value = opts.get(param)
        if value is not None:
            set_dotted(data, spec.path, str(value) if isinstance(value, Path) else value)


RESUMABLE: tuple[str, ...] = tuple(p for p, s in TRAIN_FIELDS.items() if s.resumable)
