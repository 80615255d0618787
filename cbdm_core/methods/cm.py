"""CM, capacity manipulation for class-imbalanced diffusion (ICLR 2026): low-rank
adapters on chosen convolutions and a class-weighted consistency/divergence term.

    L = MSE(h1, target) + C * mean_i[ (w_con p_{y_i} - w_div q_{y_i}) * mean_pixels (h2_i - h1_i)^2 ]

``h1`` is the main prediction (adapters on), ``h2`` the prediction on the same
``x_t, t, y_in`` with adapters off; both carry gradients (as in the released code, which
detaches neither). ``p_c = N_c / N``, ``q_c = (1/p_c) / sum_c' (1/p_c')``; the class weight
uses the true label also on rows whose label was dropped. The MSE term is the objective's
base loss (the T2H target when composed with ``t2h``); this method adds only the second term.

Execution: ``fast`` asks the shared pass for one extra view with the same labels and
switches its adapters off on that view's rows (one batched pass, exact: each row's output
depends on that row only); otherwise ``h2`` is a second forward pass under adapters off.
Sampling uses the network with adapters on (the released sampler's default ``use_cm=True``).
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Iterator, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from ..errors import CbdmError
from ..interfaces import HasConvParts
from .base import MethodBuildContext, MethodSpec, PassOutputs, StepContext, TrainingMethod
from .conv_adapters import ConvAdapters, select_convs

ADAPTERS_ATTR = "cm_adapters"
PARTS = ("head", "down", "middle", "up", "tail")


class CMOptions(BaseModel):
    """Options of the ``cm`` method.

    Args:
        rho: adapter rank ratio, ``r = max(floor(rho * min(in, out)), 1)``.
        parts: where the adapters go: any of head, down, middle, up, tail (the released
            configs: up = both 3x3 convs of every up residual block and the upsample conv;
            1x1 shortcuts and attention never get one).
        w_con: weight of the consistency part (times ``p_y``).
        w_div: weight of the divergence part (times ``q_y``); 0.2 in the released CIFAR configs.
        clamp: None (default): the term exactly as published, unbounded below. A number c:
            the divergence part ``C * mean(w_div q_y d_i)`` is capped at c, so the term stays
            above ``-c`` (the consistency part keeps its gradient).
        fast: run ``h2`` as extra rows of the shared pass (True) or as a second pass.
        sample_with: the network used for sampling: ``on`` (adapters applied by their
            hooks; the released sampler), ``merged`` (folded into the conv weights in
            place: same outputs, a bit faster; only for a model that is not trained
            further), ``off`` (the network without adapters: an ablation).
    """

    model_config = ConfigDict(extra="forbid")

    rho: float = Field(0.1, gt=0, le=1)
    parts: list[str] = Field(default_factory=lambda: ["up"], min_length=1)
    w_con: float = Field(1.0, ge=0)
    w_div: float = Field(0.2, ge=0)
    clamp: Optional[float] = Field(None, ge=0)
    fast: bool = True
    sample_with: Literal["on", "merged", "off"] = "on"

    @field_validator("parts")
    @classmethod
    def _parts(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if p not in PARTS]
        if bad:
            raise ValueError(f"unknown parts {bad}; choose from {', '.join(PARTS)}")
        return list(dict.fromkeys(v))


def class_weights(class_counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p, q)``: ``p_c = N_c / N`` and ``q_c = (1/p_c) / sum(1/p_c')`` over classes with images
    (a class without images gets ``q_c = 0``; it never occurs as a label)."""
    n = class_counts.double()
    if n.ndim != 1 or n.numel() == 0 or (n < 0).any() or n.sum() <= 0:
        raise CbdmError("cm needs the training images per class (all >= 0, some > 0)")
    p = n / n.sum()
    inv = torch.where(p > 0, 1.0 / p.clamp(min=1e-300), torch.zeros_like(p))
    return p.float(), (inv / inv.sum()).float()


def cm_terms(h1: torch.Tensor, h2: torch.Tensor, y: torch.Tensor, p: torch.Tensor, q: torch.Tensor,
             w_con: float, w_div: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(con, div)`` with ``con - div = C * mean_i[(w_con p_yi - w_div q_yi) * mean_pixels (h2_i - h1_i)^2]``."""
    c = p.numel()
    d = (h2.float() - h1.float()).pow(2).flatten(1).mean(dim=1)
    con = c * (w_con * p.to(d.device)[y] * d).mean()
    div = c * (w_div * q.to(d.device)[y] * d).mean()
    return con, div


class CM(TrainingMethod):
    """The built ``cm`` method (see the module docstring)."""

    name = "cm"

    def __init__(self, options: CMOptions, class_counts: torch.Tensor):
        self.options = options
        self.p, self.q = class_weights(class_counts)
        self._adapters: list[weakref.ref] = []

    def _live(self) -> list[ConvAdapters]:
        found = [r() for r in self._adapters]
        return [a for a in found if a is not None]

    def attach(self, model: nn.Module) -> None:
        adapters = getattr(model, ADAPTERS_ATTR, None)
        if adapters is None:
            adapters = ConvAdapters(select_convs(model, self.options.parts), self.options.rho)
            model.add_module(ADAPTERS_ATTR, adapters)
        # Already attached (e.g. a deep copy of an attached model): reuse it, hooks included.
        self._adapters.append(weakref.ref(adapters))

    def for_sampling(self, model: nn.Module) -> None:
        adapters = getattr(model, ADAPTERS_ATTR, None)
        if adapters is None:
            raise CbdmError("this model has no cm adapters (attach the cm method before loading its weights)")
        adapters.switch.off_rows = None
        mode = self.options.sample_with
        if mode == "merged":
            adapters.merge_into(model)
        else:
            adapters.switch.enabled = mode == "on"

    def extra_labels(self, ctx: StepContext) -> Optional[torch.Tensor]:
        return ctx.y_in[None] if self.options.fast else None

    def begin_pass(self, rows: slice, total: int) -> None:
        if self.options.fast:
            for a in self._live():
                a.switch.off_rows, a.switch.total = rows, total

    def end_pass(self) -> None:
        for a in self._live():
            a.switch.off_rows = None

    @contextmanager
    def adapters_off(self) -> Iterator[None]:
        """Adapters off on every attached model for the duration (the slow path's h2)."""
        live = self._live()
        before = [a.switch.enabled for a in live]
        for a in live:
            a.switch.enabled = False
        try:
            yield
        finally:
            for a, e in zip(live, before):
                a.switch.enabled = e

    def loss(self, ctx: StepContext, out: PassOutputs) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        h1 = out.pred
        if self.options.fast:
            if out.extra is None or out.extra.shape[0] != 1:
                raise CbdmError("cm (fast) expected one extra view from the shared pass")
            h2 = out.extra[0]
        else:
            with self.adapters_off():
                h2 = out.predict(ctx.x_t, ctx.time, ctx.y_in)
        o = self.options
        con, div = cm_terms(h1, h2, ctx.y, self.p, self.q, o.w_con, o.w_div)
        term = con - div
        contribution = term if o.clamp is None else con - torch.clamp(div, max=o.clamp)
        return ({"cm": term.detach(), "cm_con": con.detach(), "cm_div": div.detach()}, contribution)


def build_cm(options: CMOptions, ctx: MethodBuildContext) -> CM:
    """Factory registered for ``cm``."""
    counts = torch.as_tensor(ctx.class_counts)
    if counts.numel() != ctx.num_classes:
        raise CbdmError(f"cm got {counts.numel()} class counts for {ctx.num_classes} classes")
    return CM(options, counts)


CM_SPEC = MethodSpec(
    options_model=CMOptions,
    build=build_cm,
    paper="Capacity manipulation for class-imbalanced diffusion models (CM), ICLR 2026",
    code="https://github.com/Feng-Hong/ImbDiff-CM",
    sweepable=("rho", "w_con", "w_div"),
    requires=(HasConvParts,),  # checked when the model is built (build.check_capabilities)
)

__all__ = ["CM", "CMOptions", "CM_SPEC", "build_cm", "class_weights", "cm_terms"]
