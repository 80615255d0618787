"""One typed contract per component kind, and :class:`Components`: a run's names resolved.

The registry maps ``(kind, name)`` to an object; this module says what that object is for
every kind (a spec class, or a callable protocol for the kinds that are plain factories), so a
plugin author reads each kind's contract in one place. Names are resolved once, at the edge
(``build.resolve_components``, ``run.load_run``, the CLI commands): the layers below receive
these objects, never names, and never consult the registry themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Union

import torch

from .interfaces import BackboneSpec, DenoiseFn, GuidanceSpec, LabeledImages, MetricSpec, SamplerSpec
from .methods.base import MethodSpec
from .schedules import NoiseSchedule


class ScheduleFactory(Protocol):
    """Kind ``noise_schedule``: ``(num_timesteps, *, beta_1, beta_T) -> NoiseSchedule``
    (a schedule without betas takes and ignores them: ``**_``)."""

    def __call__(self, num_timesteps: int, *, beta_1: float = ..., beta_T: float = ...) -> NoiseSchedule: ...


class LabelDistributionFactory(Protocol):
    """Kind ``label_distribution``: ``(class_counts [C], arg) -> probabilities [C]``; ``arg`` is
    the text after the colon of ``pow:0.5`` (``None`` without one)."""

    def __call__(self, class_counts: torch.Tensor, arg: Optional[str]) -> torch.Tensor: ...


class LossFactory(Protocol):
    """Kind ``diffusion_loss``: ``(schedule) -> BaseLoss`` (:mod:`cbdm_core.objectives`). A loss tied
    to a backbone (EDM) also names a ``backbone_options`` keyword: it then receives the run's
    validated backbone options (``build.build_base_loss`` looks at the signature)."""

    def __call__(self, schedule: NoiseSchedule) -> Any: ...


class DatasetFactory(Protocol):
    """Kind ``dataset``: ``(DatasetOptions) -> LabeledImages``; an optional ``splits`` attribute
    lists the splits it has (default ``("train", "test")``)."""

    def __call__(self, options: Any) -> LabeledImages: ...


class AugmentationFactory(Protocol):
    """Kind ``augmentation``: ``(p) -> augmentation`` with ``cond_dim`` and
    ``__call__(x, generator) -> (x, cond)``."""

    def __call__(self, p: float) -> Any: ...


class FeatureExtractorFactory(Protocol):
    """Kind ``feature_extractor``: ``(**options) -> extractor`` with ``extract(images) -> FeatureSet``."""

    def __call__(self, **options: Any) -> Any: ...


GuidanceFactory = Callable[..., DenoiseFn]
"""A guidance without options: ``(model, scale, null_label) -> denoise_fn``."""

# kind -> what its registered object must be: a spec class, or the factory protocol above.
KIND_SPECS: dict[str, Any] = {
    "backbone": BackboneSpec,
    "noise_schedule": ScheduleFactory,
    "label_distribution": LabelDistributionFactory,
    "method": MethodSpec,
    "diffusion_loss": LossFactory,
    "sampler": SamplerSpec,
    "guidance": Union[GuidanceSpec, GuidanceFactory],
    "dataset": DatasetFactory,
    "augmentation": AugmentationFactory,
    "feature_extractor": FeatureExtractorFactory,
    "metric": MetricSpec,
}


@dataclass(frozen=True)
class ResolvedMethod:
    """One configured training method: its name, spec and validated options."""

    name: str
    spec: MethodSpec
    options: Any


@dataclass(frozen=True)
class ModelComponents:
    """What a trained run's model needs, resolved from its config's names once
    (``build.resolve_model_components``, by ``run.load_run``): no dataset, loss or preview
    sampler, so a run whose data plugin is gone still loads.

    Attributes:
        schedule, backbone: the registered objects (see :data:`KIND_SPECS`).
        backbone_options: the backbone's validated options (``cond_dim`` included when it takes one).
        methods: the configured methods in config order.
        label_distribution: ``name -> LabelDistributionFactory`` for names inside method options.
    """

    schedule: ScheduleFactory
    backbone: BackboneSpec
    backbone_options: Any
    methods: tuple[ResolvedMethod, ...]
    label_distribution: Callable[[str], LabelDistributionFactory]


@dataclass(frozen=True)
class Components:
    """Every component a training run uses, resolved from its config's names once.

    Attributes:
        dataset, augmentation, schedule, backbone, loss, sampler, guidance: the registered
            objects (see :data:`KIND_SPECS`); ``sampler`` and ``guidance`` are the preview's.
        backbone_options: the backbone's validated options.
        loss_name: the loss actually used (the config's, else the backbone's default).
        methods: the configured methods in config order.
        label_distribution: ``name -> LabelDistributionFactory`` for names inside method options
            (CBDM's ``y_dist``), so methods resolve them without the registry.
        plugins: ``{"kind:name": "distribution version"}`` stored with checkpoints.
    """

    dataset: DatasetFactory
    augmentation: AugmentationFactory
    schedule: ScheduleFactory
    backbone: BackboneSpec
    backbone_options: Any
    loss_name: str
    loss: LossFactory
    methods: tuple[ResolvedMethod, ...]
    sampler: SamplerSpec
    guidance: Any
    label_distribution: Callable[[str], LabelDistributionFactory]
    plugins: dict[str, str] = field(default_factory=dict)
