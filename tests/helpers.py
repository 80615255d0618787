"""Small models shared by the tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cbdm_core.nets.unet import UNet, UNetOptions


def tiny_unet(num_classes: int = 3, channels: int = 1, image_size: int = 8, dropout: float = 0.0) -> UNet:
    torch.manual_seed(0)
    opts = UNetOptions(ch=8, ch_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=dropout, num_groups=4)
    return UNet(opts, image_size=image_size, channels=channels, num_classes=num_classes)


class LinearDenoiser(nn.Module):
    """eps = a * x + b[y] + c * t: simple enough to check gradients by hand."""

    def __init__(self, num_classes: int = 3, dim: int = 4):
        super().__init__()
        self.num_classes = num_classes
        self.a = nn.Parameter(torch.tensor(0.5))
        self.b = nn.Parameter(torch.randn(num_classes + 1, 1, 2, 2) * 0.3)
        self.calls: list[int] = []

    def forward(self, x, t, y):
        self.calls.append(x.shape[0])
        return self.a * x + self.b[y] + 1e-3 * t.float().view(-1, 1, 1, 1)


def invoke_cli(*args):
    """Run ``cbdm ARGS...`` in-process (arguments stringified)."""
    from click.testing import CliRunner

    from cbdm_cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def cli_ok(*args):
    res = invoke_cli(*args)
    assert res.exit_code == 0, res.output
    return res


def cli_fails(*args, match: str) -> str:
    """The command exits 1 with exactly one ``Error:`` line containing ``match`` and no traceback."""
    res = invoke_cli(*args)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and match in errors[0], res.output
    return errors[0]


def make_ctx(model, *, b: int = 6, num_classes: int = 3, counts=None, keep=None, seed: int = 0, T: int = 100):
    """A fixed batch for ``model`` (labels cycling through the classes), drawn by the real
    :class:`~cbdm_core.objectives.DiffusionObjective` (``prepare``) with no method."""
    from cbdm_core.objectives import DiffusionObjective
    from cbdm_core.schedules import LinearSchedule

    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, model.channels, model.image_size, model.image_size, generator=g)
    y = torch.arange(b) % num_classes
    keep = torch.ones(b, dtype=torch.bool) if keep is None else keep
    t = torch.randint(0, T, (b,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    counts = torch.tensor(counts if counts is not None else [10 * (i + 1) for i in range(num_classes)])
    objective = DiffusionObjective(LinearSchedule(T=T), num_classes, class_counts=counts)
    return objective.prepare(x0, y, t=t, noise=noise, keep=keep)[0]


def run_step(model, methods, ctx):
    """One step of the real objective on ``ctx`` with ``methods``: ``(total, terms, main prediction)``."""
    from cbdm_core.methods.base import TrainingMethod
    from cbdm_core.objectives import DiffusionObjective

    class _Record(TrainingMethod):  # a last method that keeps the main prediction it was handed
        def loss(self, c, out):
            self.pred = out.pred
            return {}, out.pred.new_zeros(())

    record = _Record()
    objective = DiffusionObjective(ctx.schedule, ctx.num_classes, [*methods, record], class_counts=ctx.class_counts)
    extras = [m.extra_labels(ctx) for m in objective.methods]
    out = objective.evaluate(model, ctx, extras)
    return out.total, out.terms, record.pred


def assert_same_final_checkpoint(run_a, run_b, step: int, *, ema: bool = True):
    """The newest checkpoints of two run folders are both at ``step`` with bit-identical model
    (and, with ``ema``, EMA) tensors; returns the two checkpoints."""
    from cbdm_core.checkpoint import list_checkpoints, load_checkpoint

    a = load_checkpoint(list_checkpoints(Path(run_a) / "checkpoints")[-1][1])
    b = load_checkpoint(list_checkpoints(Path(run_b) / "checkpoints")[-1][1])
    assert a.step == b.step == step
    for k in a.model:
        assert torch.equal(a.model[k], b.model[k]), k
        if ema:
            assert torch.equal(a.ema[k], b.ema[k]), k
    return a, b
