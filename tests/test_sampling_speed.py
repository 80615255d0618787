"""The U-Net's inference attention layout (issue 29): sampling on the CPU takes SDPA's fused
kernel, training keeps the strided layout its bit-exact fixtures pin, and both give the same
eps and the same DDIM samples to rounding."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from cbdm_core.nets.unet import SelfAttention
from cbdm_core.sampling import sample
from cbdm_core.schedules import LinearSchedule

from .helpers import tiny_unet


def _lively(model: torch.nn.Module) -> torch.nn.Module:
    """Redraw the gain-1e-5 output layers, so attention and eps are O(1) and comparisons have teeth."""
    torch.manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.reset_parameters()
    return model


def _attention_ops(grad: bool) -> set[str]:
    block = _lively(SelfAttention(32, 4)).eval()
    x = torch.randn(4, 32, 8, 8, requires_grad=grad)
    with torch.set_grad_enabled(grad), profile(activities=[ProfilerActivity.CPU]) as prof:
        block(x)
    return {e.key for e in prof.key_averages()}


def test_cpu_inference_takes_the_fused_attention_kernel_and_training_does_not():
    sampling, training = _attention_ops(grad=False), _attention_ops(grad=True)
    assert any("flash" in op for op in sampling), sorted(sampling)
    assert not any("flash" in op for op in training), sorted(training)
    assert "aten::bmm" in training  # the math path the fp32 training fixtures were recorded with


@pytest.mark.parametrize("amp", [False, True])
def test_inference_layout_gives_the_training_layouts_eps(amp):
    model = _lively(tiny_unet(5)).eval()
    g = torch.Generator().manual_seed(0)
    x, t, y = torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 100, (6,), generator=g), torch.arange(6) % 6
    with torch.autocast("cpu", torch.bfloat16, enabled=amp):
        with torch.no_grad():
            fast = model(x, t, y).float()
        with torch.enable_grad():  # the strided (math-path) layout
            plain = model(x, t, y).detach().float()
    assert plain.abs().max() > 0.1  # eps is O(1): the attention's output matters
    tol = 3e-2 if amp else 1e-5  # bf16: a few bf16 ulps of eps; fp32: summation order only
    assert torch.allclose(fast, plain, rtol=tol, atol=tol * plain.abs().max().item())


def test_guided_ddim_samples_agree_across_the_two_layouts():
    model = _lively(tiny_unet(5)).eval()
    g = torch.Generator().manual_seed(1)
    x_T, y = torch.randn(6, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 3, 4, 5])  # 5 = the null label
    schedule = LinearSchedule(T=100)
    fast = sample(model, schedule, x_T, y, sampler="ddim", steps=10, guidance=1.5)

    def strided(x, t, labels):
        with torch.enable_grad():
            return model(x, t, labels).detach()

    strided.num_classes = model.num_classes
    plain = sample(strided, schedule, x_T, y, sampler="ddim", steps=10, guidance=1.5)
    scale = plain.abs().max().item()
    assert (fast - plain).abs().max().item() <= 1e-5 * max(scale, 1.0), (fast - plain).abs().max()
