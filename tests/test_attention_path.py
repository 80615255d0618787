"""The ViT backbones' attention path per precision (issue 29, cbdm_core/nets/attention_path.py): bf16 on
the CPU runs timm's explicit matmuls, fp32 keeps timm's fused SDPA; both give the same outputs and
gradients to bf16 rounding."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from cbdm_core.nets.genvit import GenViTOptions, build_genvit
from cbdm_core.nets.vit import ViTOptions, build_vit


def _lively(model: torch.nn.Module) -> torch.nn.Module:
    """Redraw every weight (the zero-initialised gates and output layers would make eps = 0)."""
    torch.manual_seed(4)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def _networks():
    vit = build_vit(ViTOptions(size="custom", depth=2, width=32, heads=2, patch_size=2), image_size=8, channels=1,
                    num_classes=3)
    genvit = build_genvit(GenViTOptions(patch_size=2, depth=2, width=16, heads=2), image_size=8, channels=1,
                          num_classes=3)
    return {"vit": vit, "genvit": genvit}


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 1, 8, 8, generator=g), torch.tensor([1, 200, 500, 999]), torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize("name", ["vit", "genvit"])
@pytest.mark.parametrize("amp, grad", [(True, True), (True, False), (False, True)])
def test_sdpa_runs_in_fp32_only(name, amp, grad):
    model, (x, t, y) = _networks()[name], _inputs()
    with torch.set_grad_enabled(grad), torch.autocast("cpu", torch.bfloat16, enabled=amp), \
            profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x, t, y)
    ops = {e.key for e in prof.key_averages()}
    assert ("aten::scaled_dot_product_attention" in ops) is (not amp), sorted(ops)


@pytest.mark.parametrize("name", ["vit", "genvit"])
def test_bf16_path_gives_fp32_outputs_and_gradients(name):
    model, (x, t, y) = _lively(_networks()[name]), _inputs()

    def run(amp: bool):
        model.zero_grad()
        with torch.autocast("cpu", torch.bfloat16, enabled=amp):
            out = model(x, t, y).float()
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return out.detach(), grads

    (o32, g32), (o16, g16) = run(False), run(True)
    assert o32.abs().max() > 0.5  # the redrawn network's output is O(1)
    assert (o16 - o32).abs().max() <= 5e-2 * o32.abs().max(), (o16 - o32).abs().max() / o32.abs().max()
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99
