"""Extra rows no loss reads are left out of the pass (objectives.run_read_views, issue 29): CBDM's y' rows
whose label was dropped or whose t is 0 carry loss weight 0, and with no random layer a y' row with
y' = y repeats the main row (both terms 0), so the CPU trainer skips them; the loss terms and every
gradient stay those of the full pass."""

import pytest
import torch

from cbdm_core.errors import CbdmError
from cbdm_core.methods.base import TrainingMethod
from cbdm_core.methods.cbdm import CBDMRegularizer
from cbdm_core.objectives import DiffusionObjective, EpsilonLoss
from cbdm_core.schedules import LinearSchedule

from .helpers import tiny_unet

B, C = 6, 3


class RowCounter(torch.nn.Module):
    """The network, recording how many rows each forward gets."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.rows = net, []
        self.num_classes = net.num_classes

    def forward(self, x, t, y, *args):
        self.rows.append(x.shape[0])
        return self.net(x, t, y, *args)


def _lively(dropout: float = 0.0):
    net = tiny_unet(C, dropout=dropout)
    torch.manual_seed(3)
    for m in net.modules():  # redraw the gain-1e-5 output layers, so eps (and the regulariser) is O(1)
        if isinstance(m, torch.nn.Conv2d):
            m.reset_parameters()
    return RowCounter(net)


def _batch(keep=(True, False, True, True, False, True), t=(500, 900, 0, 300, 100, 999)):
    g = torch.Generator().manual_seed(0)
    return dict(x0=torch.randn(B, 1, 8, 8, generator=g), y=torch.tensor([0, 1, 2, 0, 1, 2]),
                t=torch.tensor(t), noise=torch.randn(B, 1, 8, 8, generator=g), keep=torch.tensor(keep))


def _run(skip: bool, layout: str, y_prime, batch=None, dropout: float = 0.0):
    model = _lively(dropout)
    reg = CBDMRegularizer(probs=torch.ones(C) / C, tau=0.001, gamma=0.25, y_prime=y_prime)
    objective = DiffusionObjective(LinearSchedule(T=1000), C, [reg], pass_layout=layout, skip_unread_rows=skip)
    b = dict(batch or _batch())
    out = objective(model, b.pop("x0"), b.pop("y"), **b)
    out.total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.as_dict(), grads, model.rows


@pytest.mark.parametrize("layout", ["joint", "split"])
@pytest.mark.parametrize("y_prime", [torch.tensor([1, 2, 0, 0, 0, 1]), torch.tensor([[1, 2, 0, 0, 0, 1],
                                                                                      [2, 2, 1, 1, 0, 0]])])
def test_skipping_unread_rows_keeps_loss_and_gradients(layout, y_prime):
    full, g_full, rows_full = _run(False, layout, y_prime)
    fast, g_fast, rows_fast = _run(True, layout, y_prime)
    s = y_prime.shape[0] if y_prime.ndim == 2 else 1
    # keep and t > 0: rows 0, 3, 5; of those, y' = y (row 3 of the first draw) repeats the main row.
    read = 2 if s == 1 else 5
    assert sum(rows_full) == B * (1 + s) and sum(rows_fast) == B + read
    assert full["regularizer"] > 1e-4  # the regulariser is alive: the comparison has teeth
    for k in full:
        torch.testing.assert_close(fast[k], full[k], rtol=1e-5, atol=1e-8)
    assert g_fast.keys() == g_full.keys()
    for n in g_full:
        torch.testing.assert_close(g_fast[n], g_full[n], rtol=1e-4, atol=1e-7)


def test_nothing_to_skip_runs_the_plain_pass_bit_for_bit():
    batch = _batch(keep=(True,) * B, t=(500, 900, 10, 300, 100, 999))
    y_prime = torch.tensor([1, 2, 0, 1, 0, 1])  # no y' = y
    full, g_full, rows_full = _run(False, "joint", y_prime, batch)
    fast, g_fast, rows_fast = _run(True, "joint", y_prime, batch)
    assert rows_fast == rows_full == [2 * B]
    assert all(torch.equal(fast[k], full[k]) for k in full)
    assert all(torch.equal(g_fast[n], g_full[n]) for n in g_full)


def test_under_dropout_a_row_with_the_main_label_still_runs():
    """Two dropout masks give two predictions: the y' = y term is not 0, so that row stays in the pass."""
    y_prime = torch.tensor([1, 2, 0, 0, 0, 1])  # row 3: y' = y
    batch = _batch()
    torch.manual_seed(11)
    _, _, rows = _run(True, "joint", y_prime, batch, dropout=0.1)
    assert rows == [B + 3]  # keep and t > 0: rows 0, 3, 5, the repeated label included


def test_with_batch_norm_no_row_is_left_out():
    """Batch norm normalises with the pass's rows, so leaving any out would change the others' output."""
    class WithBatchNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.norm, self.rows, self.num_classes = tiny_unet(C), torch.nn.BatchNorm2d(1), [], C

        def forward(self, x, t, y, *args):
            self.rows.append(x.shape[0])
            return self.net(self.norm(x), t, y, *args)

    model = WithBatchNorm()
    reg = CBDMRegularizer(probs=torch.ones(C) / C, y_prime=torch.tensor([1, 2, 0, 0, 0, 1]))
    objective = DiffusionObjective(LinearSchedule(T=1000), C, [reg], skip_unread_rows=True)
    b = _batch()
    objective(model, b.pop("x0"), b.pop("y"), **b)
    assert model.rows == [2 * B]
    model.rows.clear()
    model.norm.eval()  # running statistics: rows are independent again
    b = _batch()
    objective(model, b.pop("x0"), b.pop("y"), **b)
    assert model.rows == [B + 2]


def test_a_method_that_reads_every_row_keeps_every_row():
    class ReadsAll(TrainingMethod):
        def extra_labels(self, ctx):
            return ctx.y_in[None].clone()

        def loss(self, ctx, out):
            return {}, out.extra.mean()

    model = _lively()
    objective = DiffusionObjective(LinearSchedule(T=1000), C, [ReadsAll()], skip_unread_rows=True)
    b = _batch()
    objective(model, b.pop("x0"), b.pop("y"), **b)
    assert model.rows == [2 * B]


def test_a_badly_shaped_mask_is_one_clear_error():
    class BadMask(CBDMRegularizer):
        def extra_rows_read(self, ctx, extra):
            return ctx.keep  # [B], not [S, B]

    reg = BadMask(probs=torch.ones(C) / C, y_prime=torch.tensor([1, 2, 0, 0, 0, 1]))
    objective = DiffusionObjective(LinearSchedule(T=1000), C, [reg], skip_unread_rows=True)
    b = _batch()
    with pytest.raises(CbdmError, match="extra_rows_read must return a mask shaped like"):
        objective(_lively(), b.pop("x0"), b.pop("y"), **b)


def test_the_cpu_trainer_skips_and_keeps_cbdm_training_as_before():
    """perf.skip_unread_rows=auto is on for the CPU; a few CBDM steps match the full pass to rounding."""
    from cbdm_core.config import PerfConfig
    from cbdm_core.training.precision import resolve_precision
    from cbdm_core.training.step import build_train_step

    def steps(skip: bool):
        model = tiny_unet(C)
        ema = tiny_unet(C).requires_grad_(False)
        schedule = LinearSchedule(T=1000)
        reg = CBDMRegularizer(probs=torch.ones(C) / C, tau=0.001, gamma=0.25)
        precision = resolve_precision(PerfConfig(amp="off", skip_unread_rows="auto" if skip else "off"),
                                      torch.device("cpu"))
        assert precision.skip_unread_rows is skip
        step = build_train_step(model, ema, EpsilonLoss(schedule), [reg], schedule=schedule, num_classes=C,
                                p_uncond=0.5, lr=1e-3, grad_clip=1.0, ema_decay=0.9, precision=precision)
        assert step.objective.skip_unread_rows is skip
        torch.manual_seed(7)
        x0, y = torch.randn(8, 1, 8, 8), torch.arange(8) % C
        for i in range(3):
            step(i, x0, y, lr=1e-3)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    torch.testing.assert_close(steps(True), steps(False), rtol=1e-4, atol=1e-6)


def test_auto_is_off_on_cuda():
    from cbdm_core.config import PerfConfig
    from cbdm_core.training.precision import resolve_precision

    p = resolve_precision(PerfConfig(amp="off", compile="off"), torch.device("cuda"))
    assert not p.skip_unread_rows
    assert resolve_precision(PerfConfig(amp="off", compile="off", skip_unread_rows="on"),
                             torch.device("cuda")).skip_unread_rows
