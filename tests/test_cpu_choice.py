"""The per-capability CPU choice (cbdm_core/training/cpu_choice.py): each capability class gets
its row of the table, explicit settings win, and the chosen step computes what the plain fp32
two-pass step computes (to rounding)."""

from pathlib import Path

import pytest
import torch

from cbdm_core.config import PerfConfig
from cbdm_core.methods.cbdm import CBDMRegularizer
from cbdm_core.objectives import DiffusionObjective, EpsilonLoss
from cbdm_core.schedules import LinearSchedule
from cbdm_core.training import cpu_choice as choice_mod
from cbdm_core.training import precision as precision_mod
from cbdm_core.training.precision import Precision, resolve_precision
from cbdm_core.training.step import PredictModule, RoutedLoss, TrainStep

from .helpers import tiny_unet

NUM_CLASSES = 3
FLAG_OF = {"amx": "amx_bf16", "avx512-bf16": "avx512_bf16", "fp32-only": ""}
CPU = torch.device("cpu")


def _mock_cpu(monkeypatch, capability: str) -> None:
    """Pretend this CPU has ``capability`` (the probe is what every choice reads)."""
    monkeypatch.setattr(precision_mod, "cpu_bf16_support", lambda: FLAG_OF[capability])


@pytest.mark.parametrize("capability", choice_mod.CAPABILITIES)
def test_each_capability_gets_its_table_row(monkeypatch, capability):
    _mock_cpu(monkeypatch, capability)
    want = choice_mod.CHOICES[capability]
    got = resolve_precision(PerfConfig(), CPU)
    assert got.amp_dtype is (torch.bfloat16 if want.amp == "bf16" else None)
    assert (got.channels_last, got.compile, got.pass_layout) == (want.channels_last(want.amp == "bf16"), want.compile,
                                                                  want.pass_layout)
    assert got.as_dict()["cpu_capability"] == capability
    # Memory handed back to the kernel: two B passes on every CPU (page faults, precision.py).
    assert resolve_precision(PerfConfig(keep_host_memory="off"), CPU).pass_layout == "split"


@pytest.mark.parametrize("capability", choice_mod.CAPABILITIES)
def test_explicit_settings_override_the_table(monkeypatch, capability):
    _mock_cpu(monkeypatch, capability)
    off = resolve_precision(PerfConfig(amp="off", channels_last="off", compile="off", pass_layout="split"), CPU)
    assert (off.amp_dtype, off.channels_last, off.compile, off.pass_layout) == (None, False, False, "split")
    on = resolve_precision(PerfConfig(amp="bf16", channels_last="on", compile="on", pass_layout="joint"), CPU)
    assert (on.amp_dtype, on.channels_last, on.compile, on.pass_layout) == (torch.bfloat16, True, True, "joint")


@pytest.mark.parametrize("capability", choice_mod.CAPABILITIES)
def test_channels_last_follows_the_precision_the_step_runs_in(monkeypatch, capability):
    """The table's NHWC choice is per precision: an explicit amp gets that precision's column."""
    _mock_cpu(monkeypatch, capability)
    row = choice_mod.CHOICES[capability]
    assert resolve_precision(PerfConfig(amp="off"), CPU).channels_last is row.fp32_channels_last
    assert resolve_precision(PerfConfig(amp="bf16"), CPU).channels_last is row.bf16_channels_last
    # An explicit layout still wins over either column.
    assert resolve_precision(PerfConfig(amp="off", channels_last="off"), CPU).channels_last is False


def test_capability_classes_follow_the_probe():
    assert [choice_mod.capability_of(f) for f in ("amx_bf16", "avx512_bf16", "")] == list(choice_mod.CAPABILITIES)
    # A CPU without native bf16 never gets bf16 by default: oneDNN would emulate it.
    assert choice_mod.CHOICES["fp32-only"].amp == "off"


def test_docs_hold_the_current_table():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md").read_text()
    assert choice_mod.choice_table() in docs, "docs/benchmarks.md: paste cpu_choice.choice_table() there"


def _step(precision: Precision) -> TrainStep:
    torch.manual_seed(0)
    model = tiny_unet(NUM_CLASSES, dropout=0.0)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    schedule = LinearSchedule(T=100)
    reg = CBDMRegularizer(probs=torch.full((NUM_CLASSES,), 1 / NUM_CLASSES), tau=0.01, gamma=0.25)
    objective = DiffusionObjective(schedule, NUM_CLASSES, [reg], p_uncond=0.2, base=RoutedLoss(EpsilonLoss(schedule)),
                                   pass_layout=precision.pass_layout)
    predict = PredictModule(model, objective.base.inner)
    return TrainStep(model, objective, torch.optim.Adam(model.parameters(), lr=1e-3), forward=predict,
                     precision=precision, grad_clip=1.0)


def _loss_and_grads(step: TrainStep):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(8, 1, 8, 8, generator=g) * 2 - 1
    y = torch.randint(0, NUM_CLASSES, (8,), generator=g)
    if step.precision.channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(7)  # the same t, noise, label dropout and y' draws in both steps
    terms = step._forward_backward(x0, y, None)
    grads = torch.cat([p.grad.flatten() for p in step.model.parameters() if p.grad is not None])
    return {k: v.detach() for k, v in terms.as_dict().items()}, grads


@pytest.mark.parametrize("capability", choice_mod.CAPABILITIES)
def test_chosen_step_matches_the_plain_fp32_two_pass_step(monkeypatch, capability):
    """fp32 choices: loss to 1e-5 relative, gradients to 1e-4 relative (summation order only);
    bf16 choices: loss terms to 2e-2 relative, gradient direction cosine > 0.99, norm to 5%."""
    _mock_cpu(monkeypatch, capability)
    chosen = resolve_precision(PerfConfig(), CPU)
    plain = Precision(device_type="cpu", amp_dtype=None, pass_layout="split")
    a_terms, a_grads = _loss_and_grads(_step(plain))
    b_terms, b_grads = _loss_and_grads(_step(chosen))
    assert a_terms["regularizer"] > 0  # the CBDM views differ, so the comparison has teeth
    if chosen.amp_dtype is None:
        for k in a_terms:
            assert torch.allclose(b_terms[k], a_terms[k], rtol=1e-5, atol=1e-9), k
        assert torch.allclose(b_grads, a_grads, rtol=1e-4, atol=1e-7)
    else:
        for k in a_terms:
            assert torch.allclose(b_terms[k], a_terms[k], rtol=2e-2, atol=1e-6), k
        assert torch.nn.functional.cosine_similarity(a_grads, b_grads, dim=0) > 0.99
        assert abs(b_grads.norm() / a_grads.norm() - 1) < 0.05
