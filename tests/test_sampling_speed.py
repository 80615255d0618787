"""The U-Net's attention paths (issue 29): bf16 on the CPU, training and sampling, runs two bf16 matmuls
around a bf16-out softmax (SDPA's math path would upcast to fp32, its flash kernel is slower); fp32
sampling and training keep the strided layout (the math path) the bit-exact fixtures pin; every path
gives the same eps, gradients and DDIM samples to rounding."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from cbdm_core.nets import unet as unet_mod
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


def _attention_ops(grad: bool, amp: bool) -> set[str]:
    block = _lively(SelfAttention(32, 4)).eval()
    x = torch.randn(4, 32, 8, 8, requires_grad=grad)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", torch.bfloat16, enabled=amp), \
            profile(activities=[ProfilerActivity.CPU]) as prof:
        block(x)
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("grad, amp, path", [(False, True, "bf16-bmm"), (False, False, "sdpa-math"),
                                             (True, True, "bf16-bmm"), (True, False, "sdpa-math")])
def test_each_cpu_attention_path_is_taken_where_it_is_fastest(grad, amp, path):
    ops = _attention_ops(grad, amp)
    assert not any("flash" in op for op in ops), sorted(ops)
    # sdpa-math: the path the fp32 training fixtures were recorded with; bf16-bmm: no SDPA at all
    assert ("aten::_scaled_dot_product_attention_math" in ops) is (path == "sdpa-math"), sorted(ops)
    assert "aten::bmm" in ops


def test_bf16_softmax_equals_an_fp32_softmax_rounded_to_bf16():
    """The bf16 path's softmax takes bf16 scores and returns bf16; torch's CPU kernel accumulates in
    fp32, so the weights are the fp32 softmax's rounded once (observed bit for bit; one bf16 ulp allowed
    for another kernel build). Inside autocast too, which would otherwise run softmax in fp32."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 1, 40, 16, generator=g).bfloat16() * 3 for _ in range(3))
    scores = torch.bmm(q.squeeze(1) * 16 ** -0.5, k.squeeze(1).transpose(1, 2))
    want = torch.bmm(torch.softmax(scores, -1, dtype=torch.float32).bfloat16(), v.squeeze(1))
    with torch.autocast("cpu", torch.bfloat16):
        got = unet_mod._matmul_attention(q, k, v).squeeze(1)
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), want.float(), rtol=2 ** -8, atol=2 ** -8 * want.abs().max().item())


def test_bf16_training_attention_matches_fp32_in_output_and_gradients():
    """The bf16 matmul path (grad enabled, CPU autocast) against fp32 SDPA on the same block and input."""
    block = _lively(SelfAttention(32, 4))
    x = torch.randn(4, 32, 8, 8, generator=torch.Generator().manual_seed(5)) * 2

    def run(amp: bool):
        xi = x.clone().requires_grad_(True)
        block.zero_grad()
        with torch.autocast("cpu", torch.bfloat16, enabled=amp):
            out = block(xi)
        (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach().float(), xi.grad, block.proj_q.weight.grad.clone()

    (o32, gx32, gq32), (o16, gx16, gq16) = run(False), run(True)
    d32, d16 = o32 - x, o16 - x  # the attention branch alone (the residual x would hide its errors)
    assert d32.abs().max() > 0.1
    assert (d16 - d32).abs().max() <= 3e-2 * d32.abs().max(), (d16 - d32).abs().max() / d32.abs().max()
    for g16, g32 in ((gx16, gx32), (gq16, gq32)):
        cos = torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0)
        assert cos > 0.995, cos


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


@pytest.mark.parametrize("amp", [False, True])
def test_guided_ddim_samples_agree_across_the_two_layouts(amp):
    """fp32: the layout is unchanged, so bit-identical; bf16: the same to bf16 rounding."""
    model = _lively(tiny_unet(5)).eval()
    g = torch.Generator().manual_seed(1)
    x_T, y = torch.randn(6, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 3, 4, 5])  # 5 = the null label
    schedule = LinearSchedule(T=100)

    def strided(x, t, labels):
        with torch.enable_grad():
            return model(x, t, labels).detach()

    def eager(x, t, labels):  # the network as given, not the prepared CPU copy (test_sampling_choice.py)
        return model(x, t, labels)

    strided.num_classes = eager.num_classes = model.num_classes
    with torch.autocast("cpu", torch.bfloat16, enabled=amp):
        fast = sample(eager, schedule, x_T, y, sampler="ddim", steps=10, guidance=1.5)
        plain = sample(strided, schedule, x_T, y, sampler="ddim", steps=10, guidance=1.5)
    if not amp:
        assert torch.equal(fast, plain)
    else:
        scale = max(plain.abs().max().item(), 1.0)
        assert (fast - plain).abs().max().item() <= 3e-2 * scale, (fast - plain).abs().max()
