"""The contracts between components. Plugins implement these; the engine only
talks to components through them.

Denoiser protocol (every backbone): ``model(x_t, t, y) -> eps`` where ``x_t`` is
``[B, C, H, W]`` float, ``t`` is ``[B]`` integer timesteps (0..T-1) and ``y`` is
``[B]`` class indices, ``model.num_classes`` being the null (unconditional) label.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Protocol, Sequence, runtime_checkable

import torch
from pydantic import BaseModel

if TYPE_CHECKING:  # nets import this module; the tap type is only named here
    from .nets.tap import FeatureTap

# eps = denoise_fn(x_t, t, y): one call of the (possibly guided) network.
DenoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# Called by samplers after each step with (step_index, num_steps, x_t).
StepCallback = Callable[[int, int, torch.Tensor], None]


class Denoiser(Protocol):
    num_classes: int

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


# -- capabilities: what a backbone may offer beyond the Denoiser protocol ------------------------
# A method that needs one declares it in ``MethodSpec.requires``; the run is refused with one line
# naming the method, the backbone and the capability when the built backbone lacks it (checked
# once, by ``build.check_capabilities``), so methods never probe with ``hasattr``.


@runtime_checkable
class HasGeometry(Protocol):
    """The image geometry it denoises and its class count (``num_classes`` is the null label)."""

    num_classes: int
    channels: int
    image_size: int


@runtime_checkable
class HasFeatureTap(Protocol):
    """An internal feature a method may read through a forward hook (:mod:`cbdm_core.nets.tap`)."""

    def feature_tap(self) -> "FeatureTap": ...


@runtime_checkable
class HasConvParts(Protocol):
    """Its convolutions grouped by part (``{"down": [(name, conv), ...], ...}``, names as in
    ``named_modules()``), for methods that adapt chosen convolutions (CM's adapters)."""

    def conv_parts(self) -> dict[str, list[tuple[str, torch.nn.Conv2d]]]: ...


# How a refusal names each capability (a plugin's own protocol is named by its class name).
CAPABILITY_TEXT: dict[type, str] = {
    HasGeometry: "HasGeometry (num_classes, channels, image_size attributes)",
    HasFeatureTap: "HasFeatureTap (a feature_tap() method)",
    HasConvParts: "HasConvParts (a conv_parts() method)",
}


def missing_capabilities(model: Any, requires: Sequence[type]) -> list[str]:
    """How each capability protocol in ``requires`` that ``model`` does not satisfy is named."""
    return [CAPABILITY_TEXT.get(cap, cap.__name__) for cap in requires if not isinstance(model, cap)]


@dataclass(frozen=True)
class BackboneSpec:
    """A denoiser architecture.

    Attributes:
        options_model: pydantic model of the architecture options (extra keys forbidden).
        build: ``build(options, *, image_size, channels, num_classes, schedule) -> nn.Module``.
        default_loss: the ``diffusion_loss`` it is trained with unless the config says otherwise.
        wrap_options: for a backbone that wraps another one (EDM preconditioning):
            ``wrap_options(inner_name, inner_options) -> options``, so switching a config's
            backbone to this one (``cbdm train --backbone edm``) keeps the configured network
            as the inner one. ``None``: switching starts from this backbone's defaults.
        recommended_lr: peak learning rate this backbone trains well with (``None``: no
            advice); ``cbdm train --backbone NAME`` moves a config's lr to it when the two
            differ more than 3x, and says so.
    """

    options_model: type[BaseModel]
    build: Callable[..., torch.nn.Module]
    default_loss: str = "ddpm"
    wrap_options: Optional[Callable[[str, dict], dict]] = None
    recommended_lr: Optional[float] = None


# Options of ``sample()`` that some samplers take and others do not (``steps``, ``generator`` and
# ``callback`` go to every sampler), each with the value that means "not set".
COMMON_SAMPLER_OPTIONS: dict[str, Any] = {"eta": 0.0, "clip_denoised": None}


@dataclass(frozen=True)
class SamplerSpec:
    """A reverse-process sampler.

    ``run(denoise_fn, schedule, x_T, y, *, steps, generator, callback, <common_options>,
    **options) -> x_0``. ``generator`` may be a list of per-sample generators
    (``len == B``) so results do not depend on the batch size.

    Attributes:
        options_model: pydantic model (``extra="forbid"``) of the sampler's own options
            (``cbdm sample -S KEY=VALUE``); ``sample()`` validates them against it, so an
            unknown or ill-typed option is one line naming the choices. ``None``: the
            sampler checks its keyword options itself.
        common_options: which of :data:`COMMON_SAMPLER_OPTIONS` (``eta``, ``clip_denoised``)
            ``run`` takes; ``sample()`` passes only these, and refuses the others when set
            (default: all of them, as before this field existed).
        refusals: the one-line error for a common option the sampler does not take but a
            caller set (e.g. why ddpm has no ``eta`` and what to use instead).
    """

    run: Callable[..., torch.Tensor]
    default_steps: Optional[int] = None
    options_model: Optional[type[BaseModel]] = None
    common_options: tuple[str, ...] = tuple(COMMON_SAMPLER_OPTIONS)
    refusals: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GuidanceSpec:
    """A guidance method with options (kind ``guidance``).

    ``build(model, scale, null_label, **options) -> denoise_fn``, where ``denoise_fn(x_t, t, y)``
    is what the sampler calls instead of the model. A plain callable
    ``(model, scale, null_label) -> denoise_fn`` may be registered instead: a guidance without
    options.

    Attributes:
        options_model: pydantic model (``extra="forbid"``) of the guidance's options
            (``cbdm sample -G KEY=VALUE``, ``guidance_options`` in settings); ``sample()``
            validates them against it, so an unknown or ill-typed option is one line naming the
            choices. Only the options given reach ``build`` (its defaults hold otherwise).
        wants_schedule: ``build`` also receives ``schedule=`` (the sampling
            :class:`~cbdm_core.schedules.NoiseSchedule`), for a guidance that needs ``abar_t``
            at the integer timesteps the sampler passes (classifier guidance).
        active_at_zero: build and apply it also at guidance strength ``w = 0``: a guidance
            whose own strength is one of its options (classifier guidance's ``scale``).
            ``False``: at ``w = 0`` the sampler calls the model as is.
    """

    build: Callable[..., DenoiseFn]
    options_model: Optional[type[BaseModel]] = None
    wants_schedule: bool = False
    active_at_zero: bool = False


METRIC_CONTEXT: tuple[str, ...] = ("radii_cache", "training", "fake_images")


class Direction(str, Enum):
    """Which way a metric value improves."""

    LOWER = "lower"  # lower is better (FID, KID, memorisation rate)
    HIGHER = "higher"  # higher is better (IS, precision, recall, coverage)
    NEITHER = "neither"  # not a score (a spread, a sample count): never used to rank


class MetricValues(dict):
    """What a metric's ``compute`` may return instead of a plain dict: the values, plus
    ``per_sample`` columns (name -> one entry per generated image, in the samples' order) that
    the evaluation writes to ``records.csv``, so no later analysis has to recompute them."""

    def __init__(self, values: Optional[Mapping[str, Any]] = None,
                 per_sample: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(values or {})
        self.per_sample: dict[str, Any] = dict(per_sample or {})


@dataclass(frozen=True)
class MetricSpec:
    """A metric computed from features.

    ``compute(real: FeatureSet, fake: FeatureSet, **options) -> dict[str, float | None]``;
    ``None`` marks a value that could not be computed (too few samples). A
    :class:`MetricValues` adds per-sample columns (``records.csv``).

    Attributes:
        values: the names ``compute`` returns and which way each improves. A key may be an
            ``fnmatch`` pattern (``"fid_class_*"``) for names that depend on the classes or the
            options; exact names win over patterns. Sweeps, reports and ``cbdm compare`` rank by
            this, so a plugin metric declares it rather than being guessed from its name.
        needs_logits: the fake set must carry class probabilities.
        needs_labels: both sets must carry class labels (per-class metrics).
        context: evaluation-context keywords ``compute`` takes besides the common ones
            (``device``, ``num_classes``, ``class_counts``), from :data:`METRIC_CONTEXT`:
            ``radii_cache`` (a :class:`~cbdm_core.metrics.RadiiCache` of the reference's k-NN
            radii), ``training`` (a :class:`~cbdm_core.metrics.TrainingReference`: images and
            features of the set the model was trained on; loaded only for such metrics) and
            ``fake_images`` (the generated ``uint8 [N, C, H, W]`` images).
        options_model: pydantic model (``extra="forbid"``) of the user-settable options
            (``cbdm eval -O metric.key=value``); the evaluation validates them against it
            before any feature is computed. ``None``: ``compute`` checks its options itself.
    """

    compute: Callable[..., dict[str, Any]]
    needs_logits: bool = False
    values: Mapping[str, Direction] = field(default_factory=dict)
    needs_labels: bool = False
    context: tuple[str, ...] = ()
    options_model: Optional[type[BaseModel]] = None

    @property
    def needs_training_set(self) -> bool:
        return "training" in self.context

    def direction(self, value: str) -> Optional[Direction]:
        """The declared direction of ``value`` (exact name first, then patterns), else ``None``."""
        if value in self.values:
            return Direction(self.values[value])
        for pattern, direction in self.values.items():
            if fnmatch.fnmatchcase(value, pattern):
                return Direction(direction)
        return None


@dataclass
class LabeledImages:
    """An in-memory labelled image set (small datasets live on the device as uint8).

    Attributes:
        images: ``uint8 [N, C, H, W]``.
        labels: ``int64 [N]`` in ``0..num_classes-1``.
        class_names: one name per class; ``len`` is the number of classes.
        name: dataset name for logs and reports.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.num_classes)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def validate_options(options_model: Optional[type[BaseModel]], options: Mapping[str, Any],
                     where: str) -> dict[str, Any]:
    """``options`` checked against a component's ``options_model`` (one-line error naming the
    field and the valid keys), returned with only the keys given, coerced to their types, so
    the component's own defaults stay in force. Without a model, ``options`` as given."""
    if options_model is None:
        return dict(options)
    from pydantic import ValidationError

    from .errors import ConfigError

    try:
        validated = options_model.model_validate(dict(options))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(options)"
        if err["type"] == "extra_forbidden":
            valid = ", ".join(options_model.model_fields) or "none"
            raise ConfigError(f"unknown option {key!r} of {where}; valid options: {valid}") from None
        raise ConfigError(f"invalid option {key} of {where}: {err['msg']}") from None
    values = validated.model_dump(exclude_unset=True)
    for key, value in values.items():  # a plugin's model may not forbid inf/nan itself
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"invalid option {key} of {where}: must be a finite number, got {value}")
    return values
