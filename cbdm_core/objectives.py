"""Training objectives: a base diffusion loss composed with training methods.

The base loss (kind ``diffusion_loss``) decides how a clean batch is noised, what the
network is asked to predict and how the error is weighted: ``ddpm`` (epsilon
prediction on the discrete schedule) is built in, ``edm`` comes with the EDM backbone.
Training methods (kind ``method``, see :mod:`cbdm_core.methods.base`) may weight the
base loss per row (``sample_weight``), replace the regression target and ask for extra
network outputs on the *same* noisy input with other labels (CBDM's y'); the objective
gathers them with the main prediction and runs them as ONE forward over the concatenated
batch, or one per view (:func:`run_views`, ``perf.pass_layout``) when no method hooks
into the pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Protocol, Sequence

import torch

from .errors import CbdmError, ConfigError
from .methods.base import PassOutputs, StepContext, TrainingMethod
from .nets.row_behaviour import has_active_random_layer, has_active_row_coupling
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
            used by methods whose weight depends on the noise level (CBDM's tau*t).
        target: what the prediction is compared with.
        weight: per-sample loss weight ``[B]`` or None.
        noise: the noise that made ``x`` (None: the target is the noise).
        prediction: what ``target`` is: ``eps`` (the noise) or ``x0`` (the clean image).
    """

    x: torch.Tensor
    time: torch.Tensor
    t: torch.Tensor
    target: torch.Tensor
    weight: Optional[torch.Tensor] = None
    noise: Optional[torch.Tensor] = None
    prediction: str = "eps"


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


def run_read_views(predict: Predict, x: torch.Tensor, time: torch.Tensor, labels: torch.Tensor,
                   read: torch.Tensor, cond: Optional[torch.Tensor], layout: str = "joint") -> torch.Tensor:
    """:func:`run_views` over the rows marked in ``read [V, B]`` only (the first view must be whole).

    Every other row gets the first view's prediction, detached: the methods that marked it unread
    (:meth:`~cbdm_core.methods.base.TrainingMethod.extra_rows_read`) give it no loss and no gradient.
    """
    if layout not in PASS_LAYOUTS:
        raise CbdmError(f"pass layout must be one of {', '.join(PASS_LAYOUTS)}, got {layout!r}")
    b = x.shape[0]

    def rows(idx: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        return predict(x[idx], time[idx], lab, None if cond is None else cond[idx]).float()

    if layout == "split":
        main = predict(x, time, labels[0], cond).float()
        filled = [main]
        for v in range(1, labels.shape[0]):
            idx = read[v].nonzero().squeeze(1)
            filled.append(main.detach().index_put((idx,), rows(idx, labels[v, idx])))
        return torch.stack(filled)
    view, idx = read.nonzero(as_tuple=True)  # row-major: the B main rows first, in order
    out = rows(idx, labels[view, idx])
    full = out[:b].detach().unsqueeze(0).expand(labels.shape[0], *x.shape)
    return full.index_put((view, idx), out)


@dataclass
class DiffusionObjective:
    """A base diffusion loss plus training methods, with classifier-free label dropout.

    Args:
        schedule: the noise schedule.
        num_classes: number of real classes; index ``num_classes`` is the null label.
        methods: :class:`~cbdm_core.methods.base.TrainingMethod` objects, in config order.
        p_uncond: probability of replacing a label by the null label.
        drop_whole_batch: drop the labels of the whole batch with probability
            ``p_uncond`` (the reference code's behaviour) instead of per sample.
        base: the base loss; epsilon prediction on ``schedule`` when omitted.
        class_counts: training images per class (what methods see as ``ctx.class_counts``);
            ones when omitted.
        pass_layout: how the views reach the network (:func:`run_views`): ``joint`` or ``split``.
        skip_unread_rows: leave out of the pass the extra rows every method marks unread
            (:func:`run_read_views`; the CPU trainer's choice: fewer rows, same loss and gradients).
            Not while a batch norm layer trains (leaving rows out would change its statistics).
    """

    schedule: NoiseSchedule
    num_classes: int
    methods: Sequence[Any] = field(default_factory=tuple)
    p_uncond: float = 0.1
    drop_whole_batch: bool = False
    base: Optional[BaseLoss] = None
    class_counts: Optional[torch.Tensor] = None
    pass_layout: str = "joint"
    skip_unread_rows: bool = False

    def __post_init__(self) -> None:
        if self.base is None:
            self.base = EpsilonLoss(self.schedule)

    def __call__(self, model, x0: torch.Tensor, y: torch.Tensor, *, t: Optional[torch.Tensor] = None,
                 noise: Optional[torch.Tensor] = None, cond: Optional[torch.Tensor] = None,
                 keep: Optional[torch.Tensor] = None, step: Optional[int] = None) -> LossTerms:
        ctx, extras = self.prepare(x0, y, t=t, noise=noise, keep=keep, step=step)
        return self.evaluate(model, ctx, extras, cond=cond)

    def prepare(self, x0: torch.Tensor, y: torch.Tensor, *, t: Optional[torch.Tensor] = None,
                noise: Optional[torch.Tensor] = None,
                keep: Optional[torch.Tensor] = None,
                step: Optional[int] = None) -> tuple[StepContext, list[Optional[torch.Tensor]]]:
        """Every random draw of a step, in a fixed order: keep mask, the base loss's t and noise,
        each method's target, each method's extra labels. Returns the context and the extras.
        ``step``: the training step (:attr:`StepContext.step`), None outside a training loop."""
        b = x0.shape[0]
        if keep is None:
            keep = self.sample_keep_mask(b, x0.device)
        batch = self.base.draw(x0, t=t, noise=noise)
        y_in = torch.where(keep, y, torch.full_like(y, self.num_classes))
        counts = self.class_counts if self.class_counts is not None else torch.ones(self.num_classes)
        ctx = StepContext(x0=x0, y=y, y_in=y_in, keep=keep, x_t=batch.x, time=batch.time, t=batch.t,
                          noise=batch.noise if batch.noise is not None else batch.target, target=batch.target,
                          schedule=self.schedule, num_classes=self.num_classes, class_counts=counts,
                          weight=batch.weight, prediction=batch.prediction, step=step)
        replaced_by = None
        for m in self.methods:
            new = m.target(ctx)
            if new is None:
                continue
            if not isinstance(new, torch.Tensor) or new.shape != ctx.target.shape:
                got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
                raise CbdmError(f"method {_name(m)!r}: target must return a tensor shaped like ctx.target "
                                f"{tuple(ctx.target.shape)} or None, got {got}")
            if replaced_by is not None:
                raise ConfigError(f"methods {replaced_by!r} and {_name(m)!r} both replace the regression "
                                  "target; a run may use at most one such method")
            replaced_by = _name(m)
            ctx.target = new.detach()
        return ctx, [_checked_extra_labels(m, ctx) for m in self.methods]

    def evaluate(self, model, ctx: StepContext, extras: Sequence[Optional[torch.Tensor]], *,
                 cond: Optional[torch.Tensor] = None) -> LossTerms:
        """The shared forward pass over ``ctx``'s rows and every method's extra views, then the losses."""
        b = ctx.x_t.shape[0]
        skip = False
        if self.skip_unread_rows:  # the module walks only where rows may be left out (the CPU trainer)
            # Leaving rows out would change the other rows' batch statistics under batch norm: then run them all.
            skip = not has_active_row_coupling(model)
            ctx = replace(ctx, repeatable=skip and not has_active_random_layer(model))
        pred_all = self._shared_pass(model, ctx, extras, cond, skip_unread=skip)
        pred = pred_all[0]

        per_elem = (pred - ctx.target.float()).pow(2)
        if ctx.weight is not None:
            per_elem = per_elem * ctx.weight.float().view(-1, *([1] * (per_elem.ndim - 1)))
        row_weight = method_weights(self.methods, ctx)
        if row_weight is not None:  # skipped when no method weighs: the unweighted floats stay bit-identical
            per_elem = per_elem * row_weight.view(-1, *([1] * (per_elem.ndim - 1)))
        diffusion = per_elem.mean()
        terms: dict[str, torch.Tensor] = {"diffusion": diffusion}
        total = diffusion

        def predict(x: torch.Tensor, time: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            rep = None if cond is None else cond.repeat(max(1, x.shape[0] // b), 1)
            return self.base.predict(model, x, time, y, rep).float()

        offset = 1
        for m, extra in zip(self.methods, extras):
            n = 0 if extra is None else extra.shape[0]
            out = PassOutputs(pred=pred, extra=pred_all[offset:offset + n] if n else None, predict=predict)
            offset += n
            method_terms, contribution = m.loss(ctx, out)
            if not isinstance(contribution, torch.Tensor) or contribution.numel() != 1:
                got = (tuple(contribution.shape) if isinstance(contribution, torch.Tensor)
                       else type(contribution).__name__)
                raise CbdmError(f"method {_name(m)!r}: loss must return a scalar tensor as its contribution, got {got}")
            clash = sorted(set(method_terms) & (set(terms) | {"total"}))
            if clash:  # a term of the same name would replace the logged one
                raise CbdmError(f"method {_name(m)!r}: loss term name(s) {', '.join(clash)} already used "
                                "(diffusion, total, or another method's term); rename them")
            terms.update(method_terms)
            total = total + contribution.reshape(())
        return LossTerms(terms=terms, total=total)

    def _shared_pass(self, model, ctx: StepContext, extras: Sequence[Optional[torch.Tensor]],
                     cond: Optional[torch.Tensor], *, skip_unread: bool) -> torch.Tensor:
        """Predictions ``[1 + S, B, ...]`` of the main rows and every method's extra views, in one pass."""
        b = ctx.x_t.shape[0]
        labels = torch.cat([ctx.y_in[None]] + [e for e in extras if e is not None], dim=0)  # [1 + S, B]
        views = labels.shape[0]
        spans, offset = [], b
        for e in extras:
            n = 0 if e is None else e.shape[0] * b
            spans.append(slice(offset, offset + n))
            offset += n
        # Methods that hook into the pass address rows of ONE concatenated pass, so they get the joint layout.
        layout = "joint" if any(_hooks_pass(m) for m in self.methods) else self.pass_layout

        def predict_rows(x: torch.Tensor, time: torch.Tensor, lab: torch.Tensor,
                         c: Optional[torch.Tensor]) -> torch.Tensor:
            out = self.base.predict(model, x, time, lab, c)
            if out.shape != x.shape[:1] + ctx.target.shape[1:]:  # else broadcast into the squared error
                raise CbdmError(f"the network returned {tuple(out.shape)} for input {tuple(x.shape)}; a backbone "
                                "must return a prediction shaped like its input")
            return out

        begun = []
        try:
            for m, rows in zip(self.methods, spans):
                m.begin_pass(rows, views * b)
                begun.append(m)
            read = self._rows_read(ctx, extras) if skip_unread else None
            if read is None:
                return run_views(predict_rows, ctx.x_t, ctx.time, labels, cond, layout)
            return run_read_views(predict_rows, ctx.x_t, ctx.time, labels, read, cond, layout)
        finally:
            for m in reversed(begun):
                m.end_pass()

    def _rows_read(self, ctx: StepContext, extras: Sequence[Optional[torch.Tensor]]) -> Optional[torch.Tensor]:
        """Bool ``[1 + S, B]`` of the rows some loss reads, or None when the pass must run every row
        (nothing to skip, or a method addresses the pass's rows by position)."""
        if any(_hooks_pass(m) for m in self.methods):
            return None
        masks = [torch.ones_like(ctx.keep)[None]]
        for m, extra in zip(self.methods, extras):
            if extra is None:
                continue
            hook = getattr(m, "extra_rows_read", None)
            mask = hook(ctx, extra) if hook is not None else None
            if mask is None:
                mask = torch.ones_like(extra, dtype=torch.bool)
            elif not isinstance(mask, torch.Tensor) or mask.shape != extra.shape:
                got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise CbdmError(f"method {_name(m)!r}: extra_rows_read must return a mask shaped like its "
                                f"extra labels {tuple(extra.shape)} or None, got {got}")
            masks.append(mask.to(torch.bool))
        read = torch.cat(masks)
        return None if bool(read.all()) else read

    def sample_keep_mask(self, b: int, device: torch.device) -> torch.Tensor:
        if self.p_uncond <= 0:
            return torch.ones(b, dtype=torch.bool, device=device)
        if self.drop_whole_batch:
            drop = torch.rand((), device=device) < self.p_uncond
            return (~drop).expand(b).clone()
        return torch.rand(b, device=device) >= self.p_uncond


def _checked_extra_labels(method: Any, ctx: StepContext) -> Optional[torch.Tensor]:
    """``method.extra_labels(ctx)``: None or an integer tensor ``[S, B]`` (one-line error otherwise)."""
    extra = method.extra_labels(ctx)
    if extra is None:
        return None
    b = ctx.y_in.shape[0]
    if (not isinstance(extra, torch.Tensor) or extra.ndim != 2 or extra.shape[1] != b or extra.shape[0] < 1
            or extra.is_floating_point() or extra.is_complex() or extra.dtype == torch.bool):
        got = f"{tuple(extra.shape)} {extra.dtype}" if isinstance(extra, torch.Tensor) else type(extra).__name__
        raise CbdmError(f"method {_name(method)!r}: extra_labels must return integer labels shaped [S, {b}] "
                        f"or None, got {got}")
    return extra


def method_weights(methods: Sequence[Any], ctx: StepContext) -> Optional[torch.Tensor]:
    """The product (float32, ``[B]``) of every method's :meth:`TrainingMethod.sample_weight` on
    ``ctx``'s rows, or None when no method returns one."""
    b = ctx.x_t.shape[0]
    product: Optional[torch.Tensor] = None
    for m in methods:
        hook = getattr(m, "sample_weight", None)
        w = hook(ctx) if hook is not None else None
        if w is None:
            continue
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != (b,):
            got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise CbdmError(f"method {_name(m)!r}: sample_weight must return a tensor of shape [{b}] "
                            f"(one weight per row) or None, got {got}")
        w = w.float().to(ctx.x_t.device)
        product = w if product is None else product * w
    return product


def _hooks_pass(method: Any) -> bool:
    """True when ``method`` overrides :meth:`TrainingMethod.begin_pass` (it masks or records rows)."""
    return getattr(type(method), "begin_pass", TrainingMethod.begin_pass) is not TrainingMethod.begin_pass


def _name(method: Any) -> str:
    return getattr(method, "name", "") or type(method).__name__
