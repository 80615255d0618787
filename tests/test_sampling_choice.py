"""The per-capability sampling choice (cbdm_core/sampling/cpu_choice.py): each capability class
prepares the network its row says, the prepared copy samples what the network as given samples
(fp32: to summation order; bf16: to bf16 rounding), and anything else runs as given."""

from pathlib import Path

import pytest
import torch

from cbdm_core.sampling import sample
from cbdm_core.sampling import cpu_choice as choice_mod
from cbdm_core.sampling.cpu_choice import Fp32GroupNorm, PreparedNetwork, sampling_network
from cbdm_core.schedules import LinearSchedule
from cbdm_core.training import precision as precision_mod

from .helpers import tiny_unet

FLAG_OF = {"amx": "amx_bf16", "avx512-bf16": "avx512_bf16", "fp32-only": ""}
NUM_CLASSES = 5


def _mock_cpu(monkeypatch, capability: str) -> None:
    """Pretend this CPU has ``capability`` (the probe every choice reads)."""
    monkeypatch.setattr(precision_mod, "cpu_bf16_support", lambda: FLAG_OF[capability])


def _lively_unet() -> torch.nn.Module:
    """A tiny U-Net whose gain-1e-5 output layers are redrawn, so eps is O(1) and comparisons have teeth."""
    model = tiny_unet(NUM_CLASSES).eval()
    torch.manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.reset_parameters()
    return model


def _as_given(model):
    """The network as given: a plain callable is never prepared."""
    def eps(x, t, y):
        return model(x, t, y)

    eps.num_classes = model.num_classes
    return eps


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 3, 4, 5])  # 5 = the null label


def _ddim(model, x_T, y, amp: bool) -> torch.Tensor:
    with torch.autocast("cpu", torch.bfloat16, enabled=amp):
        return sample(model, LinearSchedule(T=100), x_T, y, sampler="ddim", steps=10, guidance=1.5)


@pytest.mark.parametrize("capability", choice_mod.CAPABILITIES)
def test_each_capability_prepares_its_row(monkeypatch, capability):
    _mock_cpu(monkeypatch, capability)
    want = choice_mod.CHOICES[capability]
    assert choice_mod.sampling_choice() is want
    model, (x, _) = _lively_unet(), _inputs()
    fp32 = sampling_network(model, x)
    assert isinstance(fp32, PreparedNetwork) is (want.fp32_channels_last or want.compile)
    if isinstance(fp32, PreparedNetwork):
        assert fp32._channels_last is want.fp32_channels_last and fp32._dtype is torch.float32
    with torch.autocast("cpu", torch.bfloat16):
        bf16 = sampling_network(model, x)
    assert isinstance(bf16, PreparedNetwork) is want.bf16_weights
    if want.bf16_weights:
        assert bf16._dtype is torch.bfloat16 and bf16._channels_last is want.bf16_channels_last
        convs = [m for m in bf16._net.modules() if isinstance(m, torch.nn.Conv2d)]
        norms = [m for m in bf16._net.modules() if isinstance(m, torch.nn.GroupNorm)]
        assert convs and all(m.weight.dtype is torch.bfloat16 for m in convs)
        assert norms and all(type(m) is Fp32GroupNorm and m.weight.dtype is torch.float32 for m in norms)
    # The caller's network is left as it was: fp32, NCHW.
    assert all(p.dtype is torch.float32 and p.is_contiguous() for p in model.parameters())


@pytest.mark.parametrize("capability", choice_mod.CAPABILITIES)
@pytest.mark.parametrize("amp", [False, True])
def test_the_chosen_path_samples_what_the_network_as_given_samples(monkeypatch, capability, amp):
    _mock_cpu(monkeypatch, capability)
    model, (x_T, y) = _lively_unet(), _inputs()
    chosen, today = _ddim(model, x_T, y, amp), _ddim(_as_given(model), x_T, y, amp)
    scale = max(today.abs().max().item(), 1.0)
    assert scale > 1.0  # O(1) samples: the network's output matters
    # fp32: the NHWC convolutions sum in another order (observed 1.4e-6); bf16: a few bf16 ulps.
    tol = 3e-2 if amp else 1e-4
    assert (chosen - today).abs().max().item() <= tol * scale, (chosen - today).abs().max()
    if amp:  # and the bf16 path is still bf16-close to fp32
        fp32 = _ddim(_as_given(model), x_T, y, False)
        assert (chosen - fp32).abs().max().item() <= 5e-2 * scale


def test_one_copy_per_sampling_call_and_it_follows_the_weights(monkeypatch):
    _mock_cpu(monkeypatch, "avx512-bf16")
    model, (x_T, y) = _lively_unet(), _inputs()
    made = []
    real = choice_mod.prepare_network
    monkeypatch.setattr(choice_mod, "prepare_network", lambda *a: made.append(a[1]) or real(*a))
    before = _ddim(model, x_T, y, False)
    assert made == ["fp32"]  # once for the 10 steps, not once per forward
    with torch.no_grad():
        model.head.weight.data.mul_(2.0)  # through .data: no version bump, still seen
    after = _ddim(model, x_T, y, False)
    assert made == ["fp32", "fp32"]
    today = _ddim(_as_given(model), x_T, y, False)
    assert (after - today).abs().max().item() <= 1e-4 * max(today.abs().max().item(), 1.0)
    assert not torch.allclose(after, before, atol=1e-3)


@pytest.mark.parametrize("method, prepared", [("cfg", ["fp32"]), ("none", ["fp32"]), ("self-minority", [])])
def test_the_resolved_path_of_sample_folders_prepares_like_sample(monkeypatch, method, prepared):
    """``cbdm sample``, sweeps and studies sample through ``core.sample_resolved``: the copy is
    made there too, once per call, and only for guidance that just calls the network."""
    from cbdm_core.sampling.api import resolve_sampling
    from cbdm_core.sampling.core import sample_resolved
    from cbdm_core.sampling.settings import SamplerSettings

    _mock_cpu(monkeypatch, "avx512-bf16")
    made = []
    real = choice_mod.prepare_network
    monkeypatch.setattr(choice_mod, "prepare_network", lambda *a: made.append(a[1]) or real(*a))
    monkeypatch.setattr("cbdm_core.sampling.core.guided", lambda model, *a: model)  # the guidance aside
    model, (x_T, y) = _lively_unet(), _inputs()
    resolved = resolve_sampling(SamplerSettings(sampler="ddim", steps=3, guidance=1.0, guidance_method=method))
    sample_resolved(model, LinearSchedule(T=100), x_T, y, resolved)
    assert made == prepared


def test_other_networks_and_guidance_run_as_given(monkeypatch):
    _mock_cpu(monkeypatch, "avx512-bf16")
    model, (x, _) = _lively_unet(), _inputs()
    assert sampling_network(_as_given(model), x) is not None
    assert not isinstance(sampling_network(_as_given(model), x), PreparedNetwork)
    assert sampling_network(model, x.double()) is model  # not fp32: as given
    handle = model.tail.register_forward_hook(lambda *a: None)  # a feature capture reads the real modules
    try:
        assert sampling_network(model, x) is model
    finally:
        handle.remove()
    assert isinstance(sampling_network(model, x), PreparedNetwork)


def test_docs_hold_the_current_table():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md").read_text()
    assert choice_mod.choice_table() in docs, "docs/benchmarks.md: paste sampling.cpu_choice.choice_table() there"


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_bf16_copy_takes_the_bf16_matmul_attention(channels_last):
    """Without autocast, a bf16 copy still takes the bf16 attention path (unet.py), NCHW or NHWC."""
    from torch.profiler import ProfilerActivity, profile

    row = choice_mod.SamplingChoice(True, True, channels_last, False, "")
    net, (x, y) = choice_mod.prepare_network(_lively_unet(), "bf16", row), _inputs()
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        net(x, torch.full((6,), 50), y)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::bmm" in ops and not any("scaled_dot_product" in op for op in ops), sorted(ops)
