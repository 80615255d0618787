"""DiffROP and Dispersive Loss against their equations on hand-made inputs.

DiffROP (arXiv 2402.10821, reconstructed, see cbdm_core/methods/diffrop.py): the KL of two
Gaussians N(mu_i, beta_t I), N(mu_j, beta_t I) with DDPM's eps-parameterised means, built here
from the means themselves. Dispersive Loss (arXiv 2506.09027): log mean_{i,j} exp(-D_ij / tau)
by double loop."""

from __future__ import annotations

import math

import torch

from cbdm_core.methods.base import MethodBuildContext
from cbdm_core.methods.diffrop import (DiffROPOptions, build_diffrop, draw_contrast, kl_coefficients)
from cbdm_core.methods.dispersive import DispersiveOptions, build_dispersive, dispersive_loss
from cbdm_core.schedules import LinearSchedule

from .helpers import make_ctx, run_step, tiny_unet


def gaussian_kl_per_dim(mu_i, mu_j, var) -> float:
    """KL(N(mu_i, var I) || N(mu_j, var I)) / dim, from the Gaussian KL formula."""
    d = mu_i.numel()
    return float(((mu_i - mu_j) ** 2).sum() / (2 * var)) / d


def test_kl_coefficient_is_the_gaussian_kl_of_the_reverse_means():
    sched = LinearSchedule(T=100)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(1, 2, 2, generator=g, dtype=torch.float64)
    eps_i, eps_j = torch.randn(2, 1, 2, 2, generator=g, dtype=torch.float64)
    for t in (0, 7, 50, 99):
        beta, alpha, ab = sched.betas[t], 1 - sched.betas[t], sched.alphas_cumprod[t]
        mean = lambda e: (x_t - beta / (1 - ab).sqrt() * e) / alpha.sqrt()  # DDPM Eq. 11
        expected = gaussian_kl_per_dim(mean(eps_i), mean(eps_j), beta)
        got = float(kl_coefficients(sched, torch.tensor([t]))[0]) * float(((eps_i - eps_j) ** 2).mean())
        assert math.isclose(got, expected, rel_tol=1e-5), t


def test_contrast_never_draws_the_true_class():
    torch.manual_seed(0)
    y = torch.tensor([0, 1, 2, 2, 1, 0] * 20)
    probs = torch.tensor([0.7, 0.2, 0.1])
    draws = draw_contrast(probs, y, 3)
    assert draws.shape == (3, y.numel()) and not bool((draws == y).any())
    # Row of class 0: the others in the ratio 0.2 : 0.1.
    yy = torch.zeros(20000, dtype=torch.long)
    frac = (draw_contrast(probs, yy, 1) == 1).float().mean().item()
    assert abs(frac - 2 / 3) < 0.02


def randomised_unet():
    """The tiny U-Net with every weight redrawn (its zero-initialised output layer would make
    every prediction, and so every KL, zero)."""
    model = tiny_unet()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def test_diffrop_term_matches_the_hinge_on_hand_made_predictions():
    model = randomised_unet()
    ctx = make_ctx(model, keep=torch.tensor([True, True, False, True, True, True]))
    bctx = MethodBuildContext(class_counts=ctx.class_counts, num_classes=3, schedule=ctx.schedule)
    torch.manual_seed(1)
    extra = build_diffrop(DiffROPOptions(), bctx).extra_labels(ctx)
    with torch.no_grad():
        eps = model(ctx.x_t, ctx.time, ctx.y_in).float()
        eps_c = model(ctx.x_t, ctx.time, extra[0]).float()
    T = ctx.schedule.num_timesteps
    kls = []
    for i in range(len(ctx.y)):
        t = int(ctx.t[i])
        beta, ab = float(ctx.schedule.betas[t]), float(ctx.schedule.alphas_cumprod[t])
        kls.append(beta / (2 * (1 - beta) * (1 - ab)) * float(((eps[i] - eps_c[i]) ** 2).mean()))
    margin = sorted(kls)[len(kls) // 2]  # the median: some rows inside the margin, some past it
    expected = sum((1 - int(ctx.t[i]) / T) ** 2 * max(0.0, margin - kls[i])
                   for i in range(len(kls)) if ctx.keep[i]) / len(kls)
    assert expected > 0

    method = build_diffrop(DiffROPOptions(weight=0.3, margin=margin, time_power=2.0), bctx)
    torch.manual_seed(1)  # run_step draws the contrast again: the same labels
    total, terms, _ = run_step(model, [method], ctx)
    assert math.isclose(float(terms["diffrop"]), expected, rel_tol=1e-4)
    assert math.isclose(float(total.detach()), float(terms["diffusion"].detach()) + 0.3 * expected, rel_tol=1e-5)


def test_diffrop_pushes_the_two_predictions_apart_and_stops_past_the_margin():
    model = randomised_unet()
    ctx = make_ctx(model)
    bctx = MethodBuildContext(class_counts=ctx.class_counts, num_classes=3, schedule=ctx.schedule)
    zero = build_diffrop(DiffROPOptions(margin=0.0), bctx)
    torch.manual_seed(0)
    zero.extra_labels(ctx)
    _, terms, _ = run_step(model, [zero], ctx)
    assert float(terms["diffrop"]) == 0.0 and float(terms["diffrop_kl"]) > 0  # margin 0: never active
    grads = []
    for weight in (0.0, 1.0):  # the penalty's own gradient: the difference between the two
        torch.manual_seed(0)
        method = build_diffrop(DiffROPOptions(margin=1e3, weight=weight), bctx)
        total, terms, _ = run_step(model, [method], ctx)
        model.zero_grad()
        total.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert float(terms["diffrop"]) > 0 and not torch.allclose(grads[0], grads[1])


def dispersive_reference(z: torch.Tensor, tau: float) -> float:
    flat = z.flatten(1).double()
    n, d = flat.shape
    s = sum(math.exp(-float(((flat[i] - flat[j]) ** 2).sum()) / d / tau) for i in range(n) for j in range(n))
    return math.log(s / (n * n))


def test_dispersive_loss_matches_its_equation_and_is_lower_for_spread_features():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 3, 2, 2, generator=g)
    for tau in (0.5, 1.0, 2.0):
        assert math.isclose(float(dispersive_loss(z, tau)), dispersive_reference(z, tau), rel_tol=1e-5)
    # All rows equal: every D_ij = 0, the loss is log 1 = 0 (its maximum); spreading lowers it.
    same = torch.ones(4, 6)
    assert abs(float(dispersive_loss(same, 0.5))) < 1e-7
    assert float(dispersive_loss(same + torch.randn(4, 6, generator=g), 0.5)) < 0


def test_dispersive_reads_the_bottleneck_of_the_shared_pass():
    model = tiny_unet()
    ctx = make_ctx(model)
    method = build_dispersive(DispersiveOptions(weight=0.5, tau=0.5), MethodBuildContext(
        class_counts=ctx.class_counts, num_classes=3, schedule=ctx.schedule))
    method.attach(model)
    seen = {}
    h = model.feature_tap().module.register_forward_hook(lambda m, a, out: seen.setdefault("z", out.detach()))
    total, terms, _ = run_step(model, [method], ctx)
    h.remove()
    assert math.isclose(float(terms["dispersive"]), dispersive_reference(seen["z"], 0.5), rel_tol=1e-5)
    assert not list(model.dispersive_tap.parameters())  # no parameters: checkpoints unchanged


def test_diffrop_composes_with_cbdm_in_one_shared_pass():
    from cbdm_core.methods.cbdm import CBDMOptions, build_cbdm_regularizer

    model = randomised_unet()
    ctx = make_ctx(model)
    bctx = MethodBuildContext(class_counts=ctx.class_counts, num_classes=3, schedule=ctx.schedule)
    methods = [build_cbdm_regularizer(CBDMOptions(tau=0.01), bctx), build_diffrop(DiffROPOptions(margin=1e3), bctx)]
    calls = []
    h = model.register_forward_hook(lambda m, a, out: calls.append(out.shape[0]))
    _, terms, _ = run_step(model, methods, ctx)
    h.remove()
    assert calls == [3 * len(ctx.y)]  # main rows + CBDM's y' view + DiffROP's contrast view, one pass
    assert float(terms["regularizer"]) > 0 and float(terms["diffrop"]) > 0


def test_dispersive_until_step_switches_the_term_off_but_still_logs_it():
    from cbdm_core.objectives import DiffusionObjective

    def step_at(step, until):
        model = tiny_unet()
        ctx = make_ctx(model)
        ctx.step = step
        method = build_dispersive(DispersiveOptions(weight=0.5, tau=0.5, until_step=until), MethodBuildContext(
            class_counts=ctx.class_counts, num_classes=3, schedule=ctx.schedule))
        method.attach(model)
        objective = DiffusionObjective(ctx.schedule, ctx.num_classes, [method], class_counts=ctx.class_counts)
        out = objective.evaluate(model, ctx, [None])
        out.total.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return out, grads

    on, g_on = step_at(199, 200)
    off, g_off = step_at(200, 200)
    loop_free, g_free = step_at(None, 200)  # no step known (cbdm_loss, custom loops): the term applies
    # The same batch and network, so the same feature and term value in all three.
    assert math.isclose(float(on.terms["dispersive"]), float(off.terms["dispersive"]), rel_tol=1e-6)
    assert float(off.terms["dispersive"]) < 0  # logged after the switch, not zeroed
    d = float(on.terms["diffusion"])
    assert math.isclose(float(on.total), d + 0.5 * float(on.terms["dispersive"]), rel_tol=1e-5)
    assert float(off.total) == float(off.terms["diffusion"])  # contributes nothing, no gradient
    assert torch.equal(g_on, g_free) and not torch.allclose(g_on, g_off)
    plain_model = tiny_unet()
    ctx = make_ctx(plain_model)
    DiffusionObjective(ctx.schedule, 3, [], class_counts=ctx.class_counts).evaluate(plain_model, ctx, []).total.backward()
    g_plain = torch.cat([p.grad.flatten() for p in plain_model.parameters() if p.grad is not None])
    assert torch.equal(g_off, g_plain)  # after until_step the step is plain DDPM's
