"""The contracts between components. Plugins implement these; the engine only
talks to components through them.

Denoiser protocol (every backbone): ``model(x_t, t, y) -> eps`` where ``x_t`` is
``[B, C, H, W]`` float, ``t`` is ``[B]`` integer timesteps (0..T-1) and ``y`` is
``[B]`` class indices, ``model.num_classes`` being the null (unconditional) label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import torch
from pydantic import BaseModel

# eps = denoise_fn(x_t, t, y): one call of the (possibly guided) network.
DenoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# Called by samplers after each step with (step_index, num_steps, x_t).
StepCallback = Callable[[int, int, torch.Tensor], None]


class Denoiser(Protocol):
    num_classes: int

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


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
    """

    options_model: type[BaseModel]
    build: Callable[..., torch.nn.Module]
    default_loss: str = "ddpm"
    wrap_options: Optional[Callable[[str, dict], dict]] = None


@dataclass(frozen=True)
class SamplerSpec:
    """A reverse-process sampler.

    ``run(denoise_fn, schedule, x_T, y, *, steps, eta, clip_denoised, generator,
    callback, **options) -> x_0``. ``generator`` may be a list of per-sample
    generators (``len == B``) so results do not depend on the batch size.
    """

    run: Callable[..., torch.Tensor]
    default_steps: Optional[int] = None


@dataclass(frozen=True)
class MetricSpec:
    """A metric computed from features.

    ``compute(real: FeatureSet, fake: FeatureSet, **options) -> dict[str, float | None]``;
    ``None`` marks a value that could not be computed (too few samples).
    """

    compute: Callable[..., dict[str, Any]]
    needs_logits: bool = False


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
