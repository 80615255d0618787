"""CCUA (arXiv 2507.09052) against its equations on hand-made inputs.

L = L_diffusion + alpha * L_ucl + gamma * L_al (the paper's Eq. 7, quoted by its reviews). The
forms follow the authors' released U-Net code, CCUA-DDPM/DDPM/diffusion.py
(GaussianDiffusionTrainer.forward, the ``ccua_ucl``/``ccua_al`` branch) and clr.py
(``uncond_info_nce``: positive key = the query itself, negatives = the other rows, passed to
``info_nce(..., negative_mode='paired')``, cosine logits over temperature 0.1). The references
below are written from those definitions, independently of cbdm_core/methods/ccua.py."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cbdm_core.methods.base import MethodBuildContext
from cbdm_core.methods.ccua import CCUAOptions, build_ccua, time_weight, ucl_rows

from .helpers import make_ctx, run_step, tiny_unet


def ucl_reference(h: torch.Tensor, tau: float) -> list[float]:
    """Per-row InfoNCE by loop: -log(exp(cos_ii / tau) / sum_j exp(cos_ij / tau)), cos_ii = 1."""
    flat = h.flatten(1).double()
    out = []
    for i in range(flat.shape[0]):
        cos = [float(flat[i] @ flat[j] / (flat[i].norm() * flat[j].norm())) for j in range(flat.shape[0])]
        out.append(-math.log(math.exp(cos[i] / tau) / sum(math.exp(c / tau) for c in cos)))
    return out


def ucl_paired_form(h: torch.Tensor, tau: float) -> torch.Tensor:
    """The released call's form: logits [q.p, q.n_1 .. q.n_{B-1}] / tau, label 0, cross_entropy."""
    q = F.normalize(h.flatten(1).double(), dim=1)
    b = q.shape[0]
    negatives = torch.stack([torch.cat([q[:i], q[i + 1:]]) for i in range(b)])  # [B, B-1, D]
    logits = torch.cat([(q * q).sum(1, keepdim=True), (q[:, None] @ negatives.transpose(1, 2))[:, 0]], 1)
    return F.cross_entropy(logits / tau, torch.zeros(b, dtype=torch.long), reduction="none")


def randomised_unet():
    """The tiny U-Net with every weight redrawn (its zero-initialised output layer would give
    the same prediction under every label, and so a zero alignment term)."""
    model = tiny_unet()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def build(ctx, **options):
    bctx = MethodBuildContext(class_counts=ctx.class_counts, num_classes=ctx.num_classes, schedule=ctx.schedule)
    return build_ccua(CCUAOptions(**options), bctx)


def test_ucl_is_infonce_with_the_anchor_as_its_positive():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(5, 3, 2, 2, generator=g)
    for tau in (0.1, 0.5, 1.0):
        got = ucl_rows(h, tau)
        assert torch.allclose(got.double(), torch.tensor(ucl_reference(h, tau), dtype=torch.float64), rtol=1e-4, atol=1e-6)
        assert torch.allclose(got.double(), ucl_paired_form(h, tau), rtol=1e-4, atol=1e-6)
    # All rows alike: every cosine is 1, l_i = log B (its maximum); spread rows score lower.
    same = torch.ones(4, 6)
    assert torch.allclose(ucl_rows(same, 0.1), torch.full((4,), math.log(4)))
    assert float(ucl_rows(torch.randn(4, 6, generator=g), 0.1).mean()) < math.log(4)


def test_time_weight_is_linear_in_t_and_cut_below_the_threshold():
    t = torch.tensor([0, 10, 50, 99])
    assert torch.allclose(time_weight(t, 100, 1.0), t.float() / 100)
    assert torch.equal(time_weight(t, 100, 0.0, min_t=50), torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_ucl_reads_the_null_label_view_of_the_shared_pass():
    model = randomised_unet()
    ctx = make_ctx(model)
    method = build(ctx, alpha=0.7, gamma=0.0, temperature=0.2)
    method.attach(model)
    seen = {}
    h = model.feature_tap().module.register_forward_hook(lambda m, a, out: seen.setdefault("z", out.detach()))
    calls = []
    hc = model.register_forward_hook(lambda m, a, out: calls.append(out.shape[0]))
    total, terms, _ = run_step(model, [method], ctx)
    h.remove(), hc.remove()
    b, T = len(ctx.y), ctx.schedule.num_timesteps
    assert calls == [2 * b]  # main rows + the null-label view, one pass
    per_row = ucl_reference(seen["z"][b:], 0.2)  # rows [B, 2B): the unconditional view
    expected = sum(int(ctx.t[i]) / T * per_row[i] for i in range(b)) / b  # released weight t/T
    assert math.isclose(float(terms["ccua_ucl"]), expected, rel_tol=1e-5)
    assert math.isclose(float(total.detach()), float(terms["diffusion"].detach()) + 0.7 * expected, rel_tol=1e-5)
    assert float(terms["ccua_al"]) > 0  # logged, but weighted by gamma = 0
    assert not list(model.ccua_tap.parameters())  # no parameters: checkpoints unchanged


def test_alignment_only_above_the_threshold_and_only_on_kept_rows():
    model = randomised_unet()
    keep = torch.tensor([True, True, False, True, True, True])
    ctx = make_ctx(model, keep=keep)
    threshold = int(ctx.t.float().median())
    with torch.no_grad():
        eps = model(ctx.x_t, ctx.time, ctx.y_in).float()
        eps_null = model(ctx.x_t, ctx.time, torch.full_like(ctx.y, ctx.num_classes)).float()
    d = [float(((eps[i] - eps_null[i]) ** 2).mean()) for i in range(len(ctx.y))]
    rows = [i for i in range(len(ctx.y)) if keep[i] and int(ctx.t[i]) >= threshold]
    assert rows and len(rows) < int(keep.sum())  # some kept rows below the threshold, some above
    expected = sum(d[i] for i in rows) / len(ctx.y)
    method = build(ctx, alpha=0.0, gamma=2.0, al_time_power=0.0, al_min_t=threshold)
    total, terms, _ = run_step(model, [method], ctx)
    assert math.isclose(float(terms["ccua_al"]), expected, rel_tol=1e-5)
    assert math.isclose(float(total.detach()), float(terms["diffusion"].detach()) + 2.0 * expected, rel_tol=1e-5)
    # The released weight t/T on every kept row.
    T = ctx.schedule.num_timesteps
    linear = sum(int(ctx.t[i]) / T * d[i] for i in range(len(ctx.y)) if keep[i]) / len(ctx.y)
    _, terms, _ = run_step(model, [build(ctx, alpha=0.0)], ctx)
    assert math.isclose(float(terms["ccua_al"]), linear, rel_tol=1e-5)
    # A threshold above every t: no alignment at all.
    _, terms, _ = run_step(model, [build(ctx, alpha=0.0, al_min_t=T)], ctx)
    assert float(terms["ccua_al"]) == 0.0


def grads(model, methods, ctx):
    model.zero_grad()
    total, _, _ = run_step(model, methods, ctx)
    total.backward()
    return total.detach(), torch.cat([p.grad.flatten().clone() for p in model.parameters() if p.grad is not None])


def test_zero_weights_are_ddpm_bit_for_bit():
    model = randomised_unet()
    ctx = make_ctx(model)
    plain_total, plain_grad = grads(model, [], ctx)
    method = build(ctx, alpha=0.0, gamma=0.0)
    method.attach(model)
    assert method.extra_labels(ctx) is None
    total, grad = grads(model, [method], ctx)
    assert torch.equal(total, plain_total) and torch.equal(grad, plain_grad)


def test_both_sides_of_the_alignment_get_its_gradient():
    """No stop-gradient (released): grad(none) = grad(cond side only) + grad(uncond side only) - grad(DDPM)."""
    model = randomised_unet()
    ctx = make_ctx(model)
    _, g_ddpm = grads(model, [], ctx)
    g = {s: grads(model, [build(ctx, alpha=0.0, gamma=1.0, al_stop_gradient=s)], ctx)[1]
         for s in ("none", "uncond", "cond")}
    assert not torch.allclose(g["uncond"], g["cond"], atol=1e-6)
    assert not torch.allclose(g["none"], g["uncond"], atol=1e-6)
    assert torch.allclose(g["none"], g["uncond"] + g["cond"] - g_ddpm, atol=1e-5)


def test_composes_with_cbdm_and_reads_its_own_rows_of_the_pass():
    """cbdm+ccua: one pass of 3B rows (main, CBDM's y' view, CCUA's null view); L_ucl reads rows [2B, 3B)."""
    from cbdm_core.methods.cbdm import CBDMOptions, build_cbdm_regularizer

    model = randomised_unet()
    ctx = make_ctx(model)
    bctx = MethodBuildContext(class_counts=ctx.class_counts, num_classes=3, schedule=ctx.schedule)
    ccua = build(ctx, gamma=0.0)
    ccua.attach(model)
    seen = {}
    h = model.feature_tap().module.register_forward_hook(lambda m, a, out: seen.setdefault("z", out.detach()))
    _, terms, _ = run_step(model, [build_cbdm_regularizer(CBDMOptions(tau=0.01), bctx), ccua], ctx)
    h.remove()
    b, T = len(ctx.y), ctx.schedule.num_timesteps
    assert seen["z"].shape[0] == 3 * b and float(terms["regularizer"].detach()) > 0
    per_row = ucl_reference(seen["z"][2 * b:], 0.1)
    expected = sum(int(ctx.t[i]) / T * per_row[i] for i in range(b)) / b
    assert math.isclose(float(terms["ccua_ucl"]), expected, rel_tol=1e-5)


def test_vit_tokens_are_the_contrastive_feature():
    from cbdm_core.nets.vit import ViTOptions, build_vit

    torch.manual_seed(0)
    model = build_vit(ViTOptions(size="custom", depth=2, width=32, heads=2, patch_size=2),
                      image_size=8, channels=1, num_classes=3)
    ctx = make_ctx(model)
    method = build(ctx, gamma=0.0)
    method.attach(model)
    seen = {}
    h = model.feature_tap().module.register_forward_hook(lambda m, a, out: seen.setdefault("z", out.detach()))
    total, terms, _ = run_step(model, [method], ctx)
    h.remove()
    b, T = len(ctx.y), ctx.schedule.num_timesteps
    assert seen["z"].ndim == 3  # [2B, tokens, width], flattened per row
    per_row = ucl_reference(seen["z"][b:], 0.1)
    assert math.isclose(float(terms["ccua_ucl"]), sum(int(ctx.t[i]) / T * per_row[i] for i in range(b)) / b,
                        rel_tol=1e-5)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def released_brs_class_probs(n_total: int, num_classes: int, f: float) -> torch.Tensor:
    """Class probabilities of the released batch resampling (CCUA-DDPM/DDPM/dataset.py, ``brs``):
    a uniform index in [0, N) falls into class blocks of ``floor(N p_c / sum p)`` indices,
    ``p_c = f^(c/(C-1))``, the later block winning on a shared boundary and indices past the last
    block going to class C-1; then one image of that class is drawn."""
    prob = [f ** (c / (num_classes - 1)) for c in range(num_classes)]
    blocks = torch.tensor([math.floor(n_total * p / sum(prob)) for p in prob])
    edges = torch.cat([torch.zeros(1, dtype=torch.long), blocks.cumsum(0)])
    idx = torch.arange(n_total)
    cls = torch.full((n_total,), -1)
    for i in range(num_classes):
        inside = (edges[i] <= idx) & (idx <= edges[i + 1])
        cls = torch.where(inside, i, torch.where(idx > edges[i + 1], num_classes - 1, cls))
    return torch.bincount(cls, minlength=num_classes).double() / n_total


def test_released_batch_resampling_is_sqrt_class_sampling_on_cifar_lt():
    """docs/methods.md: BRS with f = 0.1 on an exponential set of imbalance 0.01 is square-root class
    sampling (data.resample: sqrt), except that the floors' leftover indices go to the rarest class."""
    from cbdm_core.data.resample import class_sampling_weights

    for num_classes, n_max in ((10, 5000), (100, 500)):  # CIFAR-10-LT, CIFAR-100-LT at imbalance 0.01
        counts = torch.tensor([int(n_max * 0.01 ** (c / (num_classes - 1))) for c in range(num_classes)])
        labels = torch.repeat_interleave(torch.arange(num_classes), counts)
        w = class_sampling_weights(labels, "sqrt", num_classes)
        ours = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, w)
        released = released_brs_class_probs(len(labels), num_classes, 0.1)
        assert float((ours[:-1] / released[:-1] - 1).abs().max()) < 0.06
        assert released[-1] >= ours[-1]
