"""Training objectives: a base diffusion loss composed with regulariser plugins.

Every regulariser may ask for extra network outputs on the *same* noisy input
with other labels (CBDM's y'); the objective gathers all of them and the main
prediction into ONE forward pass over the concatenated batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol, Sequence

import torch

from .schedules import NoiseSchedule


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
class RegularizerContext:
    """What a regulariser sees of the current batch.

    Attributes:
        x_t: noisy inputs ``[B, C, H, W]``.
        t: integer timesteps ``[B]``.
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


@dataclass
class DiffusionObjective:
    """Epsilon-prediction DDPM loss plus regularisers, with classifier-free label dropout.

    Args:
        schedule: the noise schedule.
        num_classes: number of real classes; index ``num_classes`` is the null label.
        regularizers: regulariser objects (see :class:`Regularizer`).
        p_uncond: probability of replacing a label by the null label.
        drop_whole_batch: drop the labels of the whole batch with probability
            ``p_uncond`` (the reference code's behaviour) instead of per sample.
    """

    schedule: NoiseSchedule
    num_classes: int
    regularizers: Sequence[Regularizer] = field(default_factory=tuple)
    p_uncond: float = 0.1
    drop_whole_batch: bool = False

    def __call__(self, model, x0: torch.Tensor, y: torch.Tensor, *, t: Optional[torch.Tensor] = None,
                 noise: Optional[torch.Tensor] = None, cond: Optional[torch.Tensor] = None,
                 keep: Optional[torch.Tensor] = None) -> LossTerms:
        b = x0.shape[0]
        device = x0.device
        if t is None:
            t = torch.randint(0, self.schedule.num_timesteps, (b,), device=device)
        if noise is None:
            noise = torch.randn_like(x0)
        if keep is None:
            keep = self.sample_keep_mask(b, device)
        x_t = self.schedule.q_sample(x0, t, noise)
        y_in = torch.where(keep, y, torch.full_like(y, self.num_classes))
        ctx = RegularizerContext(x_t=x_t, t=t, y=y_in, keep=keep, num_classes=self.num_classes)

        extras = [r.extra_labels(ctx) for r in self.regularizers]
        label_blocks = [y_in[None]] + [e for e in extras if e is not None]
        labels = torch.cat(label_blocks, dim=0)  # [1 + S_total, B]
        views = labels.shape[0]
        if views == 1:
            eps_all = model(x_t, t, y_in, cond) if cond is not None else model(x_t, t, y_in)
        else:
            x_rep = x_t.repeat(views, *([1] * (x_t.ndim - 1)))
            t_rep = t.repeat(views)
            if cond is not None:
                eps_all = model(x_rep, t_rep, labels.reshape(-1), cond.repeat(views, 1))
            else:
                eps_all = model(x_rep, t_rep, labels.reshape(-1))
        eps_all = eps_all.float().view(views, *x_t.shape)
        eps = eps_all[0]

        diffusion = (eps - noise.float()).pow(2).mean()
        terms: dict[str, torch.Tensor] = {"diffusion": diffusion}
        total = diffusion
        offset = 1
        for reg, extra in zip(self.regularizers, extras):
            n = 0 if extra is None else extra.shape[0]
            reg_terms, contribution = reg.loss(ctx, eps, eps_all[offset:offset + n] if n else None)
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
