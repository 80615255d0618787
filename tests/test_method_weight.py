"""The per-row weight hook of training methods (``TrainingMethod.sample_weight``) and the
method constructor contract."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cbdm_core.errors import CbdmError
from cbdm_core.methods.base import TrainingMethod
from cbdm_core.objectives import DiffusionObjective, _hooks_pass
from cbdm_core.training.distributed import ShardedObjective
from tests.helpers import make_ctx, run_step, tiny_unet


class _Weight(TrainingMethod):
    """Weights row i by ``fn(ctx)``; records the rows it was asked about."""

    def __init__(self, fn):
        super().__init__()  # the documented contract: no arguments
        self.fn = fn
        self.seen: list[int] = []

    def sample_weight(self, ctx):
        self.seen.append(int(ctx.x_t.shape[0]))
        return self.fn(ctx)


def _time_weight(ctx):
    return 0.5 + ctx.t.float() / ctx.schedule.num_timesteps  # a per-row function of t alone


def _grads(model):
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _step(methods, ctx):
    model = tiny_unet()
    total, terms, pred = run_step(model, methods, ctx)
    total.backward()
    return total, terms, pred, _grads(model)


def test_no_weight_and_ones_weight_are_bit_identical_to_no_method():
    ctx = make_ctx(tiny_unet())
    total0, terms0, _, grads0 = _step([], ctx)
    for method in (_Weight(lambda c: None), _Weight(lambda c: torch.ones(c.x_t.shape[0]))):
        total, terms, _, grads = _step([method], ctx)
        assert torch.equal(total, total0) and torch.equal(terms["diffusion"], terms0["diffusion"])
        assert all(torch.equal(a, b) for a, b in zip(grads, grads0))


def test_weighted_diffusion_is_the_hand_computed_weighted_mean():
    ctx = make_ctx(tiny_unet(), b=6)
    total, terms, pred, _ = _step([_Weight(_time_weight)], ctx)
    w = _time_weight(ctx)
    assert not torch.allclose(w, torch.ones_like(w))
    by_hand = (w.view(-1, 1, 1, 1) * (pred - ctx.target).pow(2)).mean()  # mean over ALL elements
    torch.testing.assert_close(terms["diffusion"], by_hand, rtol=1e-6, atol=0)
    assert torch.equal(total, terms["diffusion"])  # the total is that same weighted loss


def test_weights_of_several_methods_multiply():
    ctx = make_ctx(tiny_unet())
    a = lambda c: torch.linspace(0.5, 2.0, c.x_t.shape[0])  # noqa: E731
    b = _time_weight
    _, both, pred, _ = _step([_Weight(a), _Weight(lambda c: None), _Weight(b)], ctx)
    by_hand = ((a(ctx) * b(ctx)).view(-1, 1, 1, 1) * (pred - ctx.target).pow(2)).mean()
    torch.testing.assert_close(both["diffusion"], by_hand, rtol=1e-6, atol=0)


def test_a_weight_of_the_wrong_shape_is_one_line():
    ctx = make_ctx(tiny_unet(), b=6)
    with pytest.raises(CbdmError, match=r"sample_weight must return a tensor of shape \[6\].*got \(3,\)"):
        _step([_Weight(lambda c: torch.ones(3))], ctx)


def test_a_weight_only_method_keeps_the_configured_pass_layout():
    assert not _hooks_pass(_Weight(_time_weight))


def test_under_torchrun_each_rank_weights_its_own_rows():
    """Two 'ranks' of a global batch of 8: each weighs only its 4 rows, and the mean of the two
    rank losses is the single-process weighted loss."""
    model = tiny_unet()
    g = torch.Generator().manual_seed(3)
    x0, y = torch.randn(8, 1, 8, 8, generator=g), torch.arange(8) % 3
    method = _Weight(_time_weight)
    objective = DiffusionObjective(make_ctx(model).schedule, 3, [method], p_uncond=0.1)
    torch.manual_seed(7)
    whole = objective(model, x0, y)["diffusion"]
    parts = []
    for lo, hi in ((0, 4), (4, 8)):
        torch.manual_seed(7)  # every rank draws the global step from the same seed
        parts.append(ShardedObjective(objective, lo, hi)(model, x0, y)["diffusion"])
    assert method.seen == [8, 4, 4]
    torch.testing.assert_close((parts[0] + parts[1]) / 2, whole, rtol=1e-5, atol=0)


def test_constructor_contract():
    assert TrainingMethod().name == ""  # no arguments
    with pytest.raises(TypeError):
        TrainingMethod(torch.ones(3))  # the stranger's guess stays an error, as the docs now say

    class WithModule(TrainingMethod, torch.nn.Module):  # cooperative __init__ reaches nn.Module
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(2, 2)

    assert list(WithModule().state_dict()) == ["head.weight", "head.bias"]


def test_hookimpl_is_exported_lazily():
    code = ("import sys, cbdm_core; light = 'pluggy' not in sys.modules; "
            "from cbdm_core import hookimpl; from cbdm_core.hookspecs import hookimpl as h; "
            "print(light, hookimpl is h)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]
