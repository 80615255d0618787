"""CORAL: SupCon against pytorch-metric-learning and a double loop, the loss against its
equation on hand-made inputs, gradient placement, sampling, checkpoints, ViT/EDM taps."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from cbdm_core.errors import CbdmError
from cbdm_core.interfaces import missing_capabilities
from cbdm_core.methods.base import MethodBuildContext, PassOutputs, TrainingMethod
from cbdm_core.methods.coral import CORAL_SPEC, CoralOptions, build_coral, noise_weight
from cbdm_core.methods.supcon import supcon_loss
from cbdm_core.nets.edm import EDMPrecond
from cbdm_core.nets.vit import DiffusionViT, ViTOptions
from cbdm_core.schedules import LinearSchedule

from .helpers import make_ctx, run_step, tiny_unet


def supcon_reference(z: torch.Tensor, y: torch.Tensor, tau: float) -> float:
    """Khosla et al.'s l_i by double loop; anchors without positives or with l_i = 0 left out."""
    n, losses = len(y), []
    for i in range(n):
        pos = [p for p in range(n) if p != i and y[p] == y[i]]
        if not pos:
            continue
        den = sum(math.exp(float(z[i] @ z[a]) / tau) for a in range(n) if a != i)
        li = -sum(float(z[i] @ z[p]) / tau - math.log(den) for p in pos) / len(pos)
        if li > 0:
            losses.append(li)
    if not losses or len(set(y.tolist())) < 2:
        return 0.0
    return sum(losses) / len(losses)


def build(**opts):
    ctx = MethodBuildContext(class_counts=torch.tensor([10, 20, 30]), num_classes=3, schedule=LinearSchedule(T=100))
    return build_coral(CoralOptions(**opts), ctx)


@pytest.mark.parametrize("seed", range(4))
def test_supcon_matches_pytorch_metric_learning(seed):
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    g = torch.Generator().manual_seed(seed)
    n = 5 + 4 * seed
    z = F.normalize(torch.randn(n, 7, generator=g, dtype=torch.float64), dim=1)
    y = torch.randint(0, 3 + seed, (n,), generator=g)
    ours = supcon_loss(z, y, 0.12)
    theirs = pml.SupConLoss(temperature=0.12)(z, y)
    assert torch.allclose(ours, theirs.to(ours.dtype), atol=1e-10)
    assert ours.item() == pytest.approx(supcon_reference(z, y, 0.12), rel=1e-9)


def test_supcon_hand_made():
    # Rows 0 and 1 (class 0) at 90 degrees, row 2 (class 1) opposite row 0.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    tau = 0.5
    l0 = -(0 / tau - math.log(math.exp(0) + math.exp(-1 / tau)))
    l1 = -(0 / tau - math.log(math.exp(0) + math.exp(0)))
    assert supcon_loss(z, y, tau).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_supcon_degenerate_batches_give_zero_with_a_gradient_path():
    z = F.normalize(torch.randn(4, 3), dim=1).requires_grad_()
    for y in (torch.tensor([0, 1, 2, 3]), torch.tensor([1, 1, 1, 1]), torch.tensor([0])):
        loss = supcon_loss(z[: len(y)], y, 0.1)
        assert loss.item() == 0.0
        loss.backward()
        assert z.grad is not None and torch.count_nonzero(z.grad) == 0


def test_noise_weight_hand_made():
    t = torch.tensor([0, 9])
    assert noise_weight(t, 10, 0.5).item() == pytest.approx((math.exp(2.0) + math.exp(0.2)) / 2, rel=1e-6)


def _middle_feature(model, ctx):
    seen = {}
    handle = model.middleblocks[-1].register_forward_hook(lambda m, a, o: seen.setdefault("h", o))
    with torch.no_grad():
        model(ctx.x_t, ctx.time, ctx.y_in)
    handle.remove()
    return seen["h"].mean(dim=(2, 3))


@pytest.mark.parametrize("extra_tau_factor", [False, True])
def test_loss_equals_the_equation(extra_tau_factor):
    model = tiny_unet()
    coral = build(weight=0.3, tau_sc=0.2, tau_r=0.7, extra_tau_factor=extra_tau_factor)
    coral.attach(model)
    keep = torch.tensor([True, True, False, True, True, True])
    ctx = make_ctx(model, keep=keep)
    _, terms, _ = run_step(model, [coral], ctx)
    z = F.normalize(model.coral_head.proj(_middle_feature(model, ctx)), dim=1).detach()
    con = supcon_reference(z[keep].double(), ctx.y[keep], 0.2)
    s = sum(math.exp((1 - ti / 100) / 0.7) for ti in ctx.t.tolist()) / 6
    factor = 0.2 if extra_tau_factor else 1.0
    assert terms["supcon"].item() == pytest.approx(con, rel=1e-5)
    assert terms["coral_s"].item() == pytest.approx(s, rel=1e-6)
    assert terms["coral"].item() == pytest.approx(0.3 * factor * s * con, rel=1e-5)


def test_features_come_from_the_main_rows_of_the_shared_pass():
    model = tiny_unet()
    coral = build()
    coral.attach(model)
    ctx = make_ctx(model)
    alone = run_step(model, [coral], ctx)[1]["coral"]

    class OtherLabels(TrainingMethod):  # another method asking for extra rows under other labels
        def extra_labels(self, c):
            return ((c.y_in + 1) % 3)[None]

    shared = run_step(model, [OtherLabels(), coral], ctx)[1]["coral"]
    assert shared.item() == pytest.approx(alone.item(), rel=1e-5)


def test_gradients_reach_head_and_encoder_not_decoder():
    model = tiny_unet()
    coral = build(weight=1.0)
    coral.attach(model)
    ctx = make_ctx(model)
    coral.begin_pass(slice(6, 6), 6)
    model(ctx.x_t, ctx.time, ctx.y_in)
    coral.end_pass()
    _, contribution = coral.loss(ctx, PassOutputs(pred=torch.zeros(1), extra=None, predict=None))
    contribution.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["coral_head.proj.weight"].abs().sum() > 0
    assert grads["head.weight"].abs().sum() > 0
    assert grads["middleblocks.0.block1.2.weight"].abs().sum() > 0
    assert all(grads[n] is None for n in grads if n.startswith(("upblocks", "tail")))


def test_sampling_uses_no_head_and_leaves_the_output_alone():
    model = tiny_unet()
    plain = copy.deepcopy(model)
    coral = build()
    coral.attach(model)
    coral.for_sampling(model)
    ctx = make_ctx(model)
    with torch.no_grad():
        assert torch.equal(model(ctx.x_t, ctx.time, ctx.y_in), plain(ctx.x_t, ctx.time, ctx.y_in))
    assert model.coral_head.captured is None


def test_missing_begin_pass_is_a_clear_error():
    model = tiny_unet()
    coral = build()
    coral.attach(model)
    ctx = make_ctx(model)
    pred = model(ctx.x_t, ctx.time, ctx.y_in)
    with pytest.raises(CbdmError, match="begin_pass"):
        coral.loss(ctx, PassOutputs(pred=pred, extra=None, predict=None))


def test_head_round_trips_through_the_state_dict_and_keeps_backbone_names():
    model = tiny_unet()
    names_before = set(model.state_dict())
    build().attach(model)
    sd = model.state_dict()
    assert set(sd) - names_before == {"coral_head.proj.weight", "coral_head.proj.bias"}
    fresh = tiny_unet()
    torch.manual_seed(5)
    build().attach(fresh)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.coral_head.proj.weight, model.coral_head.proj.weight)


def test_deep_copy_captures_into_its_own_head_and_attach_is_idempotent():
    model = tiny_unet()
    coral = build()
    coral.attach(model)
    ema = copy.deepcopy(model)
    coral.attach(ema)  # reuses the copied head: no second hook
    assert len(ema.middleblocks[-1]._forward_hooks) == 1
    ctx = make_ctx(model)
    coral.begin_pass(slice(6, 6), 6)
    ema(ctx.x_t, ctx.time, ctx.y_in)
    coral.end_pass()
    assert ema.coral_head.captured is not None and model.coral_head.captured is None


def test_vit_tap_is_the_token_mean_after_half_the_blocks():
    torch.manual_seed(0)
    vit = DiffusionViT(ViTOptions(size="custom", depth=4, width=16, heads=2, patch_size=4),
                       image_size=8, channels=1, num_classes=3)
    tap = vit.feature_tap()
    assert tap.module is vit.blocks[1] and tap.dim == 16
    coral = build(weight=1.0)
    coral.attach(vit)
    ctx = make_ctx(vit)
    _, terms, _ = run_step(vit, [coral], ctx)
    seen = {}
    vit.blocks[1].register_forward_hook(lambda m, a, o: seen.setdefault("h", o))
    with torch.no_grad():
        vit(ctx.x_t, ctx.time, ctx.y_in)
    z = F.normalize(vit.coral_head.proj(seen["h"].mean(dim=1)), dim=1).detach()
    assert terms["supcon"].item() == pytest.approx(supcon_reference(z.double(), ctx.y, 0.1), rel=1e-5)


def test_edm_uses_the_inner_tap():
    edm = EDMPrecond(tiny_unet(), LinearSchedule(T=100))
    assert edm.feature_tap().module is edm.inner.middleblocks[-1]
    coral = build(weight=1.0)
    coral.attach(edm)
    assert "coral_head.proj.weight" in edm.state_dict()
    ctx = make_ctx(edm)
    total, terms, _ = run_step(edm, [coral], ctx)
    assert terms["supcon"].item() > 0
    total.backward()
    assert edm.coral_head.proj.weight.grad.abs().sum() > 0


def test_options_and_spec():
    with pytest.raises(Exception):
        CoralOptions(tau_scc=0.1)
    assert CORAL_SPEC.options_model is CoralOptions and "coral-lt-diffusion" in CORAL_SPEC.code
    # What coral needs of a backbone is declared, and checked when the model is built (test_capabilities).
    assert [c.__name__ for c in CORAL_SPEC.requires] == ["HasFeatureTap"]
    assert "HasFeatureTap" in missing_capabilities(torch.nn.Linear(2, 2), CORAL_SPEC.requires)[0]


def test_presets_carry_the_papers_settings():
    from cbdm_core.config import parse_train_config
    from cbdm_core.presets_registry import load_preset

    want = {"coral-cifar10lt-if100": ("cifar10-lt", 0.12, 0.8, 0.6, 0.01),
            "coral-cifar10lt-if1000": ("cifar10-lt", 0.10, 1.0, 1.0, 0.001),
            "coral-cifar100lt-if100": ("cifar100-lt", 0.09, 1.0, 0.8, 0.01)}
    for name, (dataset, tau_sc, tau_r, w, imb) in want.items():
        cfg = parse_train_config(load_preset(name), name)
        (method,) = cfg.objective.methods
        opts = CoralOptions(**method.options)
        assert method.name == "coral" and opts.extra_tau_factor and opts.weight == 0.01
        assert (cfg.data.dataset, opts.tau_sc, opts.tau_r, cfg.preview.guidance, cfg.data.imb_factor) == \
            (dataset, tau_sc, tau_r, w, imb)
        assert (cfg.optim.steps, cfg.optim.batch_size, cfg.optim.lr) == (150000, 128, 2e-4)
        assert (cfg.preview.sampler, cfg.preview.steps) == ("ddpm", 1000)
        assert cfg.model.options["ch"] == 128 and cfg.model.options["ch_mult"] == [1, 2, 2, 2]
