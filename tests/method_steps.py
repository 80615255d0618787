"""A stand-in for the objective's method protocol (one shared pass, begin/end_pass,
``out.predict``), so the method tests can run whole steps before the seam lands."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from cbdm_core.methods.base import PassOutputs, StepContext, TrainingMethod
from cbdm_core.schedules import LinearSchedule


def make_ctx(model, *, b: int = 6, num_classes: int = 3, counts: Optional[Sequence[int]] = None,
             keep: Optional[torch.Tensor] = None, seed: int = 0, T: int = 100) -> StepContext:
    """A batch for ``model`` (1 channel, 8x8) with labels cycling through the classes."""
    g = torch.Generator().manual_seed(seed)
    sched = LinearSchedule(T=T)
    x0 = torch.randn(b, model.channels, model.image_size, model.image_size, generator=g)
    y = torch.arange(b) % num_classes
    keep = torch.ones(b, dtype=torch.bool) if keep is None else keep
    y_in = torch.where(keep, y, torch.full_like(y, num_classes))
    t = torch.randint(0, T, (b,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    x_t = sched.q_sample(x0, t, noise)
    counts = torch.tensor(counts if counts is not None else [10 * (i + 1) for i in range(num_classes)])
    return StepContext(x0=x0, y=y, y_in=y_in, keep=keep, x_t=x_t, time=t, t=t, noise=noise, target=noise,
                       schedule=sched, num_classes=num_classes, class_counts=counts)


def run_step(model, methods: Sequence[TrainingMethod], ctx: StepContext):
    """One step as the objective will run it; returns (total, terms, pred)."""
    b = ctx.y.shape[0]
    extras = [m.extra_labels(ctx) for m in methods]
    labels = torch.cat([ctx.y_in[None]] + [e for e in extras if e is not None])
    views = labels.shape[0]
    total_rows = views * b
    offset, slices = b, []
    for e in extras:
        n = 0 if e is None else e.shape[0] * b
        slices.append(slice(offset, offset + n))
        offset += n
    for m, s in zip(methods, slices):
        m.begin_pass(s, total_rows)
    try:
        x = ctx.x_t.repeat(views, 1, 1, 1)
        pred_all = model(x, ctx.time.repeat(views), labels.reshape(-1)).float().view(views, *ctx.x_t.shape)
    finally:
        for m in methods:
            m.end_pass()
    pred = pred_all[0]
    total = (pred - ctx.target).pow(2).mean()
    terms = {"diffusion": total.detach()}
    for m, s in zip(methods, slices):
        n = (s.stop - s.start) // b
        extra = pred_all[s.start // b:s.stop // b] if n else None
        out = PassOutputs(pred=pred, extra=extra, predict=lambda x, t, y: model(x, t, y).float())
        mt, contribution = m.loss(ctx, out)
        terms.update(mt)
        total = total + contribution
    return total, terms, pred
