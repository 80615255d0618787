"""Training objectives: a base diffusion loss composed with regulariser plugins.

The base loss (kind ``diffusion_loss``) decides how a clean batch is noised, what the
network is asked to predict and how the error is weighted: ``ddpm`` (epsilon
prediction on the discrete schedule) is built in, ``edm`` comes with the EDM backbone.
Every regulariser may ask for extra network outputs on the *same* noisy input with
other labels (CBDM's y'); the objective gathers them with the main prediction and
runs them as one forward over the concatenated batch or one per view
(:func:`run_views`, ``perf.pass_layout``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence

import torch

from .errors import CbdmError
from .schedules import NoiseSchedule

PASS_LAYOUTS = ("joint", "split")


@dataclass
class LossTerms:
    """Named scalar terms; ``total`` is what is optimised."""

    terms: dict[str, torch.Tensor]
    total: torch.Tensor

    def __getitem__(self, key: str) -> torch.Tensor:
        if key == "total":
            return self.total
        return self.terms[key]

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {**self.terms, "total": self.total}


@dataclass
class NoisyBatch:
    """A noised batch as drawn by a base loss.

    Attributes:
        x: the network input ``[B, C, H, W]``.
        time: what the network receives as its time input (integer t, or sigma).
        t: the equivalent integer timestep ``[B]`` on the discrete schedule (0..T-1),
            used by regularisers whose weight depends on the noise level (CBDM's tau*t).
        target: what the prediction is compared with.
        weight: per-sample loss weight ``[B]`` or None.
    """

    x: torch.Tensor
    time: torch.Tensor
    t: torch.Tensor
    target: torch.Tensor
    weight: Optional[torch.Tensor] = None


class BaseLoss(Protocol):
    """How to noise a batch, call the network, and score its prediction."""

    def draw(self, x0: torch.Tensor, *, t: Optional[torch.Tensor] = None,
             noise: Optional[torch.Tensor] = None) -> NoisyBatch: ...

    def predict(self, model, x: torch.Tensor, time: torch.Tensor, y: torch.Tensor,
                cond: Optional[torch.Tensor]) -> torch.Tensor: ...


@dataclass
class EpsilonLoss:
    """DDPM's simple loss: predict the noise of ``x_t = sqrt(ab) x0 + sqrt(1 - ab) eps``."""

    schedule: NoiseSchedule

    def draw(self, x0: torch.Tensor, *, t: Optional[torch.Tensor] = None,
             noise: Optional[torch.Tensor] = None) -> NoisyBatch:
        if t is None:
            t = torch.randint(0, self.schedule.num_timesteps, (x0.shape[0],), device=x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        return NoisyBatch(x=self.schedule.q_sample(x0, t, noise), time=t, t=t, target=noise)

    def predict(self, model, x, time, y, cond):
        return model(x, time, y) if cond is None else model(x, time, y, cond)


@dataclass
class RegularizerContext:
    """What a regulariser sees of the current batch.

    Attributes:
        x_t: noisy inputs ``[B, C, H, W]``.
        t: integer (or equivalent integer) timesteps ``[B]``.
        y: labels as fed to the network (null where dropped) ``[B]``.
        keep: bool mask ``[B]``: False for rows whose label was dropped.
        num_classes: number of real classes (also the null index).
    """

    x_t: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor
    keep: torch.Tensor
    num_classes: int


class Regularizer(Protocol):
    """A training regulariser composed with the base diffusion loss."""

    def extra_labels(self, ctx: RegularizerContext) -> Optional[torch.Tensor]:
        """Labels ``[S, B]`` for extra predictions on the same ``x_t`` (or None)."""

    def loss(self, ctx: RegularizerContext, eps: torch.Tensor,
             eps_extra: Optional[torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Named terms (for logging) and the contribution to the total loss."""


Predict = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def run_views(predict: Predict, x: torch.Tensor, time: torch.Tensor, labels: torch.Tensor,
              cond: Optional[torch.Tensor], layout: str = "joint") -> torch.Tensor:
    """Network outputs ``[V, B, ...]`` (fp32) for the same ``x`` under each label row of ``labels [V, B]``.

    ``joint``: one pass over ``[x, x, ...]`` with labels ``[y, y', ...]`` (fewer, larger
    launches: the GPU's choice). ``split``: one pass per view, the reference code's
    layout. Both compute the same rows (to rounding; network dropout draws other masks).
    """
    if layout not in PASS_LAYOUTS:
        raise CbdmError(f"pass layout must be one of {', '.join(PASS_LAYOUTS)}, got {layout!r}")
    views = labels.shape[0]
    if views == 1:
        return predict(x, time, labels[0], cond).float().unsqueeze(0)
    if layout == "split":
        return torch.stack([predict(x, time, labels[i], cond).float() for i in range(views)])
    x_rep = x.repeat(views, *([1] * (x.ndim - 1)))
    time_rep = time.repeat(views)
    cond_rep = None if cond is None else cond.repeat(views, 1)
    return predict(x_rep, time_rep, labels.reshape(-1), cond_rep).float().view(views, *x.shape)


@dataclass
class DiffusionObjective:
    """A base diffusion loss plus regularisers, with classifier-free label dropout.

    Args:
        schedule: the noise schedule.
        num_classes: number of real classes; index ``num_classes`` is the null label.
        regularizers: regulariser objects (see :class:`Regularizer`).
        p_uncond: probability of replacing a label by the null label.
        drop_whole_batch: drop the labels of the whole batch with probability
            ``p_uncond`` (the reference code's behaviour) instead of per sample.
        base: the base loss; epsilon prediction on ``schedule`` when omitted.
        pass_layout: how the views reach the network (:func:`run_views`): ``joint`` or ``split``.
    """

    schedule: NoiseSchedule
    num_classes: int
    regularizers: Sequence[Regularizer] = field(default_factory=tuple)
    p_uncond: float = 0.1
    drop_whole_batch: bool = False
    base: Optional[BaseLoss] = None
    pass_layout: str = "joint"

    def __post_init__(self) -> None:
        if self.base is None:
            self.base = EpsilonLoss(self.schedule)

    def __call__(self, model, x0: torch.Tensor, y: torch.Tensor, *, t: Optional[torch.Tensor] = None,
                 noise: Optional[torch.Tensor] = None, cond: Optional[torch.Tensor] = None,
                 keep: Optional[torch.Tensor] = None) -> LossTerms:
        b = x0.shape[0]
        if keep is None:
            keep = self.sample_keep_mask(b, x0.device)
        batch = self.base.draw(x0, t=t, noise=noise)
        y_in = torch.where(keep, y, torch.full_like(y, self.num_classes))
        ctx = RegularizerContext(x_t=batch.x, t=batch.t, y=y_in, keep=keep, num_classes=self.num_classes)

        extras = [r.extra_labels(ctx) for r in self.regularizers]
        labels = torch.cat([y_in[None]] + [e for e in extras if e is not None], dim=0)  # [1 + S, B]
        pred_all = run_views(lambda x, time, lab, c: self.base.predict(model, x, time, lab, c),
                             batch.x, batch.time, labels, cond, self.pass_layout)
        pred = pred_all[0]

        per_elem = (pred - batch.target.float()).pow(2)
        if batch.weight is not None:
            per_elem = per_elem * batch.weight.float().view(-1, *([1] * (per_elem.ndim - 1)))
        diffusion = per_elem.mean()
        terms: dict[str, torch.Tensor] = {"diffusion": diffusion}
        total = diffusion
        offset = 1
        for reg, extra in zip(self.regularizers, extras):
            n = 0 if extra is None else extra.shape[0]
            reg_terms, contribution = reg.loss(ctx, pred, pred_all[offset:offset + n] if n else None)
            offset += n
            terms.update(reg_terms)
            total = total + contribution
        return LossTerms(terms=terms, total=total)

    def sample_keep_mask(self, b: int, device: torch.device) -> torch.Tensor:
        if self.p_uncond <= 0:
            return torch.ones(b, dtype=torch.bool, device=device)
        if self.drop_whole_batch:
            drop = torch.rand((), device=device) < self.p_uncond
            return (~drop).expand(b).clone()
        return torch.rand(b, device=device) >= self.p_uncond
