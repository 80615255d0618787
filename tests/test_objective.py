"""The CBDM loss against an independent re-computation, and where its gradients go."""

import pytest
import torch

from cbdm_core import LinearSchedule, cbdm_loss
from cbdm_core.errors import CbdmError

from .helpers import LinearDenoiser, tiny_unet


def _batch(b=6, c=1, s=8, num_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, c, s, s, generator=g) * 2 - 1
    y = torch.randint(0, num_classes, (b,), generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    noise = torch.randn(b, c, s, s, generator=g)
    yp = torch.randint(0, num_classes, (b,), generator=g)
    return x0, y, t, noise, yp


def test_terms_match_independent_recomputation():
    model = tiny_unet().eval()
    sched = LinearSchedule()
    x0, y, t, noise, yp = _batch()
    out = cbdm_loss(model, x0, y, sched, t=t, noise=noise, y_prime=yp, p_uncond=0.0, tau=0.001, gamma=0.25)
    ab = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t].float().view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    with torch.no_grad():
        e_y = model(x_t, t, y)
        e_p = model(x_t, t, yp)
    w = (0.001 * t.float()).view(-1, 1, 1, 1)
    diffusion = ((e_y - noise) ** 2).mean()
    reg = (w * (e_y - e_p) ** 2).mean()
    assert torch.allclose(out["diffusion"], diffusion, rtol=1e-5, atol=1e-7)
    assert torch.allclose(out["regularizer"], reg, rtol=1e-4, atol=1e-9)
    # Numerically the commitment term has the same value; it differs only in its gradient.
    assert torch.allclose(out["commitment"], reg, rtol=1e-4, atol=1e-9)
    assert torch.allclose(out["total"], diffusion + reg + 0.25 * reg, rtol=1e-4)
    assert out["regularizer"] > 0


def test_tau_zero_is_plain_ddpm_and_skips_second_pass():
    model = LinearDenoiser()
    sched = LinearSchedule()
    x0, y, t, noise, _ = _batch(c=1, s=2)
    out = cbdm_loss(model, x0, y, sched, tau=0.0, t=t, noise=noise, p_uncond=0.0)
    assert model.calls == [6]
    x_t = sched.q_sample(x0, t, noise)
    assert torch.allclose(out["total"], ((model(x_t, t, y) - noise) ** 2).mean())
    assert out["regularizer"] == 0


def test_one_forward_over_concatenated_batch():
    model = LinearDenoiser()
    x0, y, t, noise, _ = _batch(c=1, s=2)
    cbdm_loss(model, x0, y, LinearSchedule(), t=t, noise=noise, p_uncond=0.0, set_size=3)
    assert model.calls == [6 * 4]


def _grads(model, term, **kw):
    model.zero_grad()
    x0, _, t, noise, _ = _batch(c=1, s=2)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    yp = torch.tensor([2, 2, 2, 2, 2, 2])
    out = cbdm_loss(model, x0, y, LinearSchedule(), t=t, noise=noise, y_prime=yp, p_uncond=0.0, **kw)
    out[term].backward()
    return model.b.grad.clone(), y, yp


def test_regularizer_gradient_reaches_only_eps_y_and_commitment_only_eps_yprime():
    torch.manual_seed(0)
    model = LinearDenoiser()
    # b[y] receives gradient only through eps(x_t, y); b[y'] only through eps(x_t, y').
    g_reg, y, yp = _grads(model, "regularizer")
    g_com, _, _ = _grads(model, "commitment")
    only_y = set(y.tolist()) - set(yp.tolist())
    only_yp = set(yp.tolist()) - set(y.tolist())
    assert only_y and only_yp, "batch should have labels only in y and only in y'"
    for c in only_y:
        assert g_reg[c].abs().sum() > 0 and g_com[c].abs().sum() == 0
    for c in only_yp:
        assert g_com[c].abs().sum() > 0 and g_reg[c].abs().sum() == 0


def test_regularizer_gradient_value_matches_closed_form():
    model = LinearDenoiser()
    x0, y, t, noise, yp = _batch(c=1, s=2)
    sched = LinearSchedule()
    x_t = sched.q_sample(x0, t, noise)
    eps_y = model(x_t, t, y).detach().requires_grad_(True)
    eps_p = model(x_t, t, yp).detach()
    w = (0.001 * t.float()).view(-1, 1, 1, 1)
    expected = 2 * w * (eps_y - eps_p) / eps_y.numel()
    reg = (w * (eps_y - eps_p) ** 2).mean()
    reg.backward()
    assert torch.allclose(eps_y.grad, expected)


def test_dropped_labels_get_no_regularizer():
    model = LinearDenoiser()
    x0, y, t, noise, yp = _batch(c=1, s=2)
    y_all_null = torch.full_like(y, model.num_classes)
    out = cbdm_loss(model, x0, y_all_null, LinearSchedule(), t=t, noise=noise, y_prime=yp, p_uncond=0.0)
    assert out["regularizer"] == 0 and out["commitment"] == 0
    # p_uncond=1 drops every label: same result.
    out1 = cbdm_loss(model, x0, y, LinearSchedule(), t=t, noise=noise, y_prime=yp, p_uncond=1.0)
    assert out1["regularizer"] == 0
    assert torch.allclose(out1["diffusion"], out["diffusion"])


def test_partial_drop_zeroes_only_dropped_rows():
    model = LinearDenoiser()
    x0, y, t, noise, yp = _batch(c=1, s=2)
    y_half = y.clone()
    y_half[:3] = model.num_classes
    out = cbdm_loss(model, x0, y_half, LinearSchedule(), t=t, noise=noise, y_prime=yp, p_uncond=0.0)
    x_t = LinearSchedule().q_sample(x0, t, noise)
    with torch.no_grad():
        e_y, e_p = model(x_t, t, y_half), model(x_t, t, yp)
    w = (0.001 * t.float()).view(-1, 1, 1, 1)
    w[:3] = 0
    assert torch.allclose(out["regularizer"], (w * (e_y - e_p) ** 2).mean(), rtol=1e-5)


def test_y_dist_validation():
    model = LinearDenoiser()
    x0, y, *_ = _batch(c=1, s=2)
    with pytest.raises(CbdmError):
        cbdm_loss(model, x0, y, LinearSchedule(), y_dist=torch.tensor([1.0, 0.0]))
    with pytest.raises(CbdmError):
        cbdm_loss(model, x0, y, LinearSchedule(), y_dist="sqrt")  # needs class_counts
    out = cbdm_loss(model, x0, y, LinearSchedule(), y_dist="sqrt", class_counts=[100, 10, 1])
    assert torch.isfinite(out["total"])
