"""One optimisation step: forward under autocast, backward, clip, Adam, EMA.

Nothing here waits for the GPU (no ``.item()``, ``bool(tensor)`` or pageable copies)
except the optional non-finite skip, which has to look at the loss before updating.
The trainer and ``benchmarks/train_step.py`` run this same code.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import torch

from ..device import DistContext
from ..errors import CbdmError
from ..nets.dropout import use_dropout_masks
from ..objectives import DiffusionObjective, LossTerms
from ..schedules import NoiseSchedule
from .distributed import ShardedObjective, wrap_ddp
from .ema import EMA
from .precision import Precision, compile_module, to_channels_last, warn_eager

T = TypeVar("T")


class PredictModule(torch.nn.Module):
    """``forward(x, time, y, cond) = base.predict(model, x, time, y, cond)``.

    One module around the whole prediction, so DDP and ``torch.compile`` see every
    network call the base loss makes (EDM calls ``model.denoise``, not ``forward``).
    """

    def __init__(self, model: torch.nn.Module, base: Any):
        super().__init__()
        self.model = model
        self.base = base

    def forward(self, x: torch.Tensor, time: torch.Tensor, y: torch.Tensor,
                cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.base.predict(self.model, x, time, y, cond)


@dataclass
class RoutedLoss:
    """A base loss whose ``predict`` calls the given forward (a :class:`PredictModule`,
    maybe wrapped in DDP or compiled) instead of the raw model."""

    inner: Any

    def draw(self, x0: torch.Tensor, *, t: Optional[torch.Tensor] = None,
             noise: Optional[torch.Tensor] = None):
        return self.inner.draw(x0, t=t, noise=noise)

    def predict(self, forward, x, time, y, cond):
        return forward(x, time, y, cond)


def on_device(obj: T, device: torch.device) -> T:
    """A shallow copy of ``obj`` with its tensor attributes on ``device`` (``obj`` itself on the CPU).

    Schedules and methods keep their tables on the CPU and move them to the batch's
    device on every call (``NoiseSchedule.gather``, CBDM's ``probs``): a blocking
    host-to-device copy per step on CUDA. Tables already on the device make that free.
    """
    if device.type == "cpu":
        return obj
    if isinstance(obj, torch.nn.Module):
        return obj.to(device)
    if not hasattr(obj, "__dict__"):  # slotted objects: leave them as they are
        return obj
    out = copy.copy(obj)
    for name, value in vars(obj).items():
        if torch.is_tensor(value):
            setattr(out, name, value.to(device))
    return out


@dataclass
class StepResult:
    """What one step returns; all tensors stay on the device.

    Attributes:
        terms: the detached loss terms (this rank's mean).
        finite: bool scalar, loss and gradient norm finite.
        applied: False when the step was skipped (non-finite, skip mode).
        grad_norm: the gradient norm before clipping (for the logs).
    """

    terms: dict[str, torch.Tensor]
    finite: torch.Tensor
    applied: bool = True
    grad_norm: Optional[torch.Tensor] = None


class TrainStep:
    """The training step.

    Args:
        model: the network (its parameters are optimised and averaged).
        objective: the diffusion objective; its base loss must be a :class:`RoutedLoss`
            when ``forward`` is given.
        optimizer: optimiser over ``model``'s parameters.
        ema: the EMA updater (None: no EMA).
        forward: what the objective calls, e.g. a compiled or DDP-wrapped
            :class:`PredictModule`; ``model`` itself when omitted.
        eager_forward: the uncompiled ``forward`` to fall back to if compiling fails.
        precision: autocast settings.
        grad_clip: max gradient norm (0: no clipping, the norm is still computed).
        shard: ``(lo, hi)`` rows of the global batch this rank computes (DDP).
        all_finite: ANDs the finite flag over ranks (DDP, skip mode only); identity otherwise.
    """

    def __init__(self, model: torch.nn.Module, objective: DiffusionObjective, optimizer: torch.optim.Optimizer,
                 ema: Optional[EMA] = None, *, forward: Optional[Callable] = None,
                 eager_forward: Optional[Callable] = None, precision: Precision = Precision(),
                 grad_clip: float = 0.0, shard: Optional[tuple[int, int]] = None,
                 all_finite: Callable[[torch.Tensor], torch.Tensor] = lambda f: f):
        self.model = model
        self.objective = objective if shard is None else ShardedObjective(objective, *shard)
        self.optimizer = optimizer
        self.ema = ema
        self.forward = model if forward is None else forward
        self.eager_forward = eager_forward if eager_forward is not None else self.forward
        self.precision = precision
        self.max_norm = grad_clip if grad_clip > 0 else float("inf")
        self.all_finite = all_finite
        self._params = [p for p in model.parameters() if p.requires_grad]
        # Until a compiled step has run once, a failure falls back to eager.
        self._unverified = self.forward is not self.eager_forward

    def loss(self, x0: torch.Tensor, y: torch.Tensor, cond: Optional[torch.Tensor] = None,
             step: Optional[int] = None) -> LossTerms:
        """Forward and loss (under autocast); the loss terms are fp32. ``step``: the training step,
        for methods that follow the schedule (:attr:`~cbdm_core.methods.base.StepContext.step`)."""
        with self.precision.autocast():
            return self.objective(self.forward, x0, y, cond=cond, step=step)

    def _forward_backward(self, x0, y, cond, step: Optional[int] = None) -> LossTerms:
        terms = self.loss(x0, y, cond, step)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        return terms

    def _first_compiled(self, x0, y, cond, step: Optional[int] = None) -> LossTerms:
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        try:
            terms = self._forward_backward(x0, y, cond, step)
        except CbdmError:  # a user error, not the compiler's
            raise
        except Exception as exc:  # compiler failures surface at the first forward or backward
            warn_eager(exc)
            # Same random numbers as if the step had run eagerly from the start.
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            self.forward = self.eager_forward
            terms = self._forward_backward(x0, y, cond, step)
        self._unverified = False
        return terms

    def __call__(self, step: int, x0: torch.Tensor, y: torch.Tensor, cond: Optional[torch.Tensor] = None, *,
                 lr: Optional[float] = None, skip_nonfinite: bool = False) -> StepResult:
        """One step on the (global) batch ``x0, y``; ``step`` is the EMA's update count and what methods
        see as :attr:`~cbdm_core.methods.base.StepContext.step`."""
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        if self._unverified:
            terms = self._first_compiled(x0, y, cond, step)
        else:
            terms = self._forward_backward(x0, y, cond, step)
        norm = torch.nn.utils.clip_grad_norm_(self._params, self.max_norm)
        finite = torch.isfinite(terms.total) & torch.isfinite(norm)
        detached = {k: v.detach() for k, v in terms.as_dict().items()}
        if skip_nonfinite:
            # A host sync (and, under DDP, a collective), only in skip mode: all ranks skip together.
            finite = self.all_finite(finite)
            if not bool(finite):
                return StepResult(detached, finite, applied=False, grad_norm=norm.detach())
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(step)
        return StepResult(detached, finite, grad_norm=norm.detach())


def build_train_step(model: torch.nn.Module, ema_model: torch.nn.Module, base: Any, methods: list[Any], *,
                     schedule: NoiseSchedule, num_classes: int, class_counts: Optional[torch.Tensor] = None,
                     p_uncond: float = 0.1,
                     drop_whole_batch: bool = False, lr: float = 2e-4, grad_clip: float = 1.0,
                     ema_decay: float = 0.9999, ema_warmup: bool = False, precision: Precision = Precision(),
                     ctx: Optional[DistContext] = None, batch_size: Optional[int] = None) -> TrainStep:
    """Wire a :class:`TrainStep` the way the trainer does (the benchmarks call this too).

    ``model`` and ``ema_model`` live on the training device already; they are switched to
    channels_last here if ``precision`` asks. Schedule and method tables are moved to
    the device. Under DDP (``ctx.enabled``) the step computes this rank's rows of the
    global ``batch_size``.
    """
    device = next(model.parameters()).device
    ctx = ctx or DistContext(device=device)
    if precision.channels_last:
        to_channels_last(model)
        to_channels_last(ema_model)
    use_dropout_masks(model, precision.dropout_masks)
    schedule = on_device(schedule, device)

    def moved(obj: T) -> T:
        out = on_device(obj, device)
        if out is not obj and isinstance(getattr(out, "schedule", None), NoiseSchedule):
            out.schedule = schedule  # type: ignore[attr-defined]
        return out

    base = moved(base)
    objective = DiffusionObjective(schedule, num_classes, [moved(m) for m in methods],
                                   p_uncond=p_uncond, drop_whole_batch=drop_whole_batch, base=RoutedLoss(base),
                                   class_counts=None if class_counts is None else class_counts.to(device),
                                   pass_layout=precision.pass_layout,
                                   skip_unread_rows=precision.skip_unread_rows)
    # CUDA: the fused kernel. CPU: the multi-tensor path (torch picks the per-tensor loop there by
    # default, 5-7% of a small CPU step); it gives bit-identical updates.
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, **fast)
    ema = EMA(model, ema_model, ema_decay, warmup=ema_warmup)
    # DDP wraps the whole prediction; compile wraps DDP (its optimizer splits graphs at buckets).
    eager = wrap_ddp(PredictModule(model, base), ctx)
    forward, _ = compile_module(eager, precision.compile)
    shard = ctx.shard(batch_size) if ctx.enabled and batch_size is not None else None
    return TrainStep(model, objective, optimizer, ema, forward=forward, eager_forward=eager, precision=precision,
                     grad_clip=grad_clip, shard=shard, all_finite=ctx.all_device)
