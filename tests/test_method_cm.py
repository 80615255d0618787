"""CM: adapter shapes and placement, hook path = merged weights = W + delta_W, the loss
against its equation, fast path = two passes (loss and gradients), gradient placement,
sampling modes, checkpoints, EMA copies, EDM."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from cbdm_core.errors import CbdmError
from cbdm_core.interfaces import missing_capabilities
from cbdm_core.methods.base import MethodBuildContext, PassOutputs
from cbdm_core.methods.cm import CM_SPEC, CMOptions, build_cm, class_weights, cm_terms
from cbdm_core.nets.edm import EDMPrecond
from cbdm_core.nets.vit import DiffusionViT, ViTOptions
from cbdm_core.schedules import LinearSchedule

from .helpers import make_ctx, run_step
from .helpers import tiny_unet as _tiny_unet

COUNTS = torch.tensor([30, 10, 2])


def tiny_unet():
    """The shared tiny U-Net with its near-zero output convs re-drawn, so outputs are O(1)
    and the tolerances below mean something."""
    model = _tiny_unet()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(m.weight[0].numel()))
    return model


def build(**opts):
    ctx = MethodBuildContext(class_counts=COUNTS, num_classes=3, schedule=LinearSchedule(T=100))
    return build_cm(CMOptions(**opts), ctx)


def randomise_b(model, seed=1, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for d in model.cm_adapters.deltas.values():
            d.B.copy_(torch.randn(d.B.shape, generator=g) * scale)


def test_class_weights_hand_made():
    p, q = class_weights(torch.tensor([3, 1]))
    assert torch.allclose(p, torch.tensor([0.75, 0.25]))
    assert torch.allclose(q, torch.tensor([0.25, 0.75]))  # 1/p = (4/3, 4)
    p, q = class_weights(torch.tensor([4, 0]))
    assert q.tolist() == [1.0, 0.0]
    with pytest.raises(CbdmError):
        class_weights(torch.tensor([0, 0]))


def test_cm_terms_hand_made():
    h1 = torch.zeros(2, 1, 1, 2)
    h2 = torch.tensor([[[[1.0, 3.0]]], [[[2.0, 2.0]]]])  # per-row mean sq diff: 5, 4
    p, q = torch.tensor([0.75, 0.25]), torch.tensor([0.25, 0.75])
    con, div = cm_terms(h1, h2, torch.tensor([0, 1]), p, q, w_con=1.0, w_div=0.2)
    # C * mean_i[(w_con p - w_div q) d_i] = 2 * ((0.75 - 0.05) * 5 + (0.25 - 0.15) * 4) / 2
    assert (con - div).item() == pytest.approx(0.70 * 5 + 0.10 * 4, rel=1e-6)
    assert div.item() == pytest.approx(0.2 * (0.25 * 5 + 0.75 * 4), rel=1e-6)


def test_default_adapters_sit_on_the_up_path_3x3_convs_with_the_published_shapes():
    model = tiny_unet()
    build(rho=0.25).attach(model)
    names = model.cm_adapters.names
    up_res = [b for b in model.upblocks if hasattr(b, "block1")]
    assert len(names) == 2 * len(up_res) + 1  # both 3x3 convs per up block, plus the one Upsample conv
    assert all(n.startswith("upblocks.") for n in names)
    assert not any("shortcut" in n or "attn" in n for n in names)
    conv = model.upblocks[0].block1[-1]  # in 32, out 16, k 3
    d = model.cm_adapters.deltas["upblocks__0__block1__2"]
    r = max(math.floor(0.25 * min(conv.in_channels, conv.out_channels)), 1)
    assert d.A.shape == (r * 3, conv.in_channels * 3) and d.B.shape == (conv.out_channels * 3, r * 3)
    assert torch.count_nonzero(d.B) == 0 and d.A.std() > 0


def test_parts_select_convs_and_reject_unknown_names():
    model = tiny_unet()
    build(parts=["head", "down", "middle", "tail"]).attach(model)
    names = model.cm_adapters.names
    assert names[0] == "head" and names[-1] == "tail.2"
    assert "downblocks.1.main" in names and "middleblocks.1.block2.3" in names
    assert not any(n.startswith("upblocks") for n in names)
    with pytest.raises(ValidationError):
        CMOptions(parts=["bottom"])
    vit = DiffusionViT(ViTOptions(size="custom", depth=2, width=16, heads=2, patch_size=4),
                       image_size=8, channels=1, num_classes=3)
    # cm declares conv parts, which a ViT lacks: the run is refused when the model is built.
    assert [c.__name__ for c in CM_SPEC.requires] == ["HasConvParts"]
    assert "conv_parts" in missing_capabilities(vit, CM_SPEC.requires)[0]
    assert missing_capabilities(model, CM_SPEC.requires) == []


def test_zero_b_leaves_the_output_unchanged():
    model = tiny_unet()
    plain = copy.deepcopy(model)
    build(parts=list(("head", "down", "middle", "up", "tail"))).attach(model)
    ctx = make_ctx(model)
    with torch.no_grad():
        assert torch.equal(model(ctx.x_t, ctx.time, ctx.y_in), plain(ctx.x_t, ctx.time, ctx.y_in))


def test_hook_equals_conv_with_w_plus_delta_including_strided_convs():
    model = tiny_unet()
    build(parts=["down"]).attach(model)
    randomise_b(model)
    conv = model.downblocks[1].main  # Downsample: stride 2
    assert conv.stride == (2, 2)
    x = torch.randn(2, conv.in_channels, 8, 8)
    dw = model.cm_adapters.deltas["downblocks__1__main"].delta()
    expected = F.conv2d(x, conv.weight + dw, conv.bias, conv.stride, conv.padding)
    assert torch.allclose(conv(x), expected, atol=1e-5)


def test_merged_weights_equal_the_hook_path():
    model = tiny_unet()
    cm = build(parts=["head", "down", "middle", "up", "tail"], sample_with="merged")
    cm.attach(model)
    randomise_b(model)
    ctx = make_ctx(model)
    with torch.no_grad():
        hooked = model(ctx.x_t, ctx.time, ctx.y_in)
        model.cm_adapters.switch.enabled = False
        plain_out = model(ctx.x_t, ctx.time, ctx.y_in)
        model.cm_adapters.switch.enabled = True
        cm.for_sampling(model)
        merged = model(ctx.x_t, ctx.time, ctx.y_in)
    assert not model.cm_adapters.switch.enabled
    assert torch.allclose(hooked, merged, atol=1e-5)
    assert (hooked - plain_out).abs().max() > 1e-2


def test_sampling_modes():
    model = tiny_unet()
    plain = copy.deepcopy(model)
    cm = build(sample_with="off")
    cm.attach(model)
    randomise_b(model)
    ctx = make_ctx(model)
    with torch.no_grad():
        on = model(ctx.x_t, ctx.time, ctx.y_in)
        cm.for_sampling(model)
        off = model(ctx.x_t, ctx.time, ctx.y_in)
        ref = plain(ctx.x_t, ctx.time, ctx.y_in)
    assert torch.equal(off, ref) and (on - ref).abs().max() > 1e-2
    cm_on = build()
    cm_on.for_sampling(model)  # default "on": adapters back on for every row
    with torch.no_grad():
        assert torch.equal(model(ctx.x_t, ctx.time, ctx.y_in), on)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("clamp", [None, 1e-4])
def test_fast_path_equals_two_passes_in_loss_and_gradients(clamp):
    model = tiny_unet()
    fast = build(fast=True, clamp=clamp)
    fast.attach(model)
    randomise_b(model, scale=0.3)
    slow_model = copy.deepcopy(model)
    slow = build(fast=False, clamp=clamp)
    slow.attach(slow_model)
    ctx = make_ctx(model, keep=torch.tensor([True, False, True, True, False, True]))
    total_f, terms_f, _ = run_step(model, [fast], ctx)
    total_s, terms_s, _ = run_step(slow_model, [slow], ctx)
    assert terms_f["cm"].abs() > 0
    for k in ("diffusion", "cm", "cm_con", "cm_div"):
        assert terms_f[k].item() == pytest.approx(terms_s[k].item(), rel=1e-4, abs=1e-9)
    assert total_f.item() == pytest.approx(total_s.item(), rel=1e-5)
    total_f.backward()
    total_s.backward()
    gf, gs = _grads(model), _grads(slow_model)
    assert gf.keys() == gs.keys() and "cm_adapters.deltas.upblocks__0__block1__2.B" in gf
    for n in gf:
        assert torch.allclose(gf[n], gs[n], rtol=1e-3, atol=1e-7), n


def test_loss_equals_the_equation_with_true_labels_on_dropped_rows():
    model = tiny_unet()
    cm = build(w_con=1.0, w_div=2.0)
    cm.attach(model)
    randomise_b(model, scale=0.3)
    ctx = make_ctx(model, keep=torch.tensor([False] * 3 + [True] * 3))
    _, terms, pred = run_step(model, [cm], ctx)
    with torch.no_grad():
        cm.for_sampling(model)
        h1 = model(ctx.x_t, ctx.time, ctx.y_in)
        model.cm_adapters.switch.enabled = False
        h2 = model(ctx.x_t, ctx.time, ctx.y_in)
    n = COUNTS.double()
    p = n / n.sum()
    q = (1 / p) / (1 / p).sum()
    d = (h2 - h1).double().pow(2).mean(dim=(1, 2, 3))
    expected = 3 * ((1.0 * p[ctx.y] - 2.0 * q[ctx.y]) * d).mean()
    assert expected < 0  # the tail weight is negative here
    assert terms["cm"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert torch.allclose(pred, h1, atol=1e-5)


def test_clamp_bounds_the_term_below():
    model = tiny_unet()
    cm = build(w_con=0.0, w_div=1.0, clamp=1e-6)
    cm.attach(model)
    randomise_b(model, scale=0.3)
    ctx = make_ctx(model)
    b = ctx.y.shape[0]
    cm.begin_pass(slice(b, 2 * b), 2 * b)
    pred = model(ctx.x_t.repeat(2, 1, 1, 1), ctx.time.repeat(2), ctx.y_in.repeat(2)).view(2, *ctx.x_t.shape)
    cm.end_pass()
    terms, contribution = cm.loss(ctx, PassOutputs(pred=pred[0], extra=pred[1:], predict=None))
    assert terms["cm"].item() < -1e-6
    assert contribution.item() == pytest.approx(-1e-6)


def test_adapter_gradients_come_only_through_h1():
    model = tiny_unet()
    cm = build(fast=False)
    cm.attach(model)
    randomise_b(model, scale=0.3)
    ctx = make_ctx(model)
    h1 = model(ctx.x_t, ctx.time, ctx.y_in)
    predict = lambda x, t, y: model(x, t, y)  # noqa: E731
    # h1 detached: only the adapters-off pass h2 carries gradients.
    _, c = cm.loss(ctx, PassOutputs(pred=h1.detach(), extra=None, predict=predict))
    c.backward()
    g = _grads(model)
    assert not any(n.startswith("cm_adapters") for n in g)
    assert g["head.weight"].abs().sum() > 0  # the backbone learns through h2 too
    model.zero_grad(set_to_none=True)
    # h1 with gradients: the adapters receive them.
    _, c = cm.loss(ctx, PassOutputs(pred=model(ctx.x_t, ctx.time, ctx.y_in), extra=None, predict=predict))
    c.backward()
    assert model.cm_adapters.deltas["upblocks__0__block1__2"].A.grad.abs().sum() > 0


def test_row_mask_only_switches_its_rows_and_checks_the_batch():
    model = tiny_unet()
    plain = copy.deepcopy(model)
    cm = build()
    cm.attach(model)
    randomise_b(model, scale=0.3)
    ctx = make_ctx(model)
    x, t, y = ctx.x_t.repeat(3, 1, 1, 1), ctx.time.repeat(3), ctx.y_in.repeat(3)
    with torch.no_grad():
        full_on = model(x, t, y)
        cm.begin_pass(slice(6, 12), 18)
        mixed = model(x, t, y)
        with pytest.raises(RuntimeError, match="row mask"):
            model(ctx.x_t, ctx.time, ctx.y_in)
        cm.end_pass()
        off = plain(x, t, y)
    assert torch.allclose(mixed[:6], full_on[:6], atol=1e-6) and torch.allclose(mixed[12:], full_on[12:], atol=1e-6)
    assert torch.equal(mixed[6:12], off[6:12]) and (full_on[6:12] - off[6:12]).abs().max() > 1e-2


def test_adapters_round_trip_and_ddpm_weights_load_by_name():
    ddpm = tiny_unet()
    ddpm_sd = ddpm.state_dict()
    model = tiny_unet()
    build().attach(model)
    missing, unexpected = model.load_state_dict(ddpm_sd, strict=False)
    assert unexpected == [] and missing and all(k.startswith("cm_adapters.") for k in missing)
    randomise_b(model)
    fresh = tiny_unet()
    torch.manual_seed(7)
    build().attach(fresh)
    fresh.load_state_dict(model.state_dict())
    ctx = make_ctx(model)
    with torch.no_grad():
        assert torch.equal(fresh(ctx.x_t, ctx.time, ctx.y_in), model(ctx.x_t, ctx.time, ctx.y_in))


def test_deep_copy_uses_its_own_adapters():
    model = tiny_unet()
    cm = build()
    cm.attach(model)
    ema = copy.deepcopy(model)
    cm.attach(ema)  # idempotent: no second set of hooks
    assert len(ema.upblocks[0].block1[-1]._forward_hooks) == 1
    ctx = make_ctx(model)
    with torch.no_grad():
        before = model(ctx.x_t, ctx.time, ctx.y_in)
        randomise_b(ema)
        assert torch.equal(model(ctx.x_t, ctx.time, ctx.y_in), before)
        assert (ema(ctx.x_t, ctx.time, ctx.y_in) - before).abs().max() > 1e-2


def test_edm_over_unet():
    edm = EDMPrecond(tiny_unet(), LinearSchedule(T=100))
    cm = build()
    cm.attach(edm)
    assert all(n.startswith("inner.upblocks.") for n in edm.cm_adapters.names)
    randomise_b(edm, scale=0.3)
    total, terms, _ = run_step(edm, [cm], make_ctx(edm))
    total.backward()
    assert terms["cm"].abs() > 0
    assert edm.cm_adapters.deltas["inner__upblocks__0__block1__2"].B.grad.abs().sum() > 0


def test_spec_and_build_errors():
    assert CM_SPEC.options_model is CMOptions and "ImbDiff-CM" in CM_SPEC.code
    with pytest.raises(CbdmError, match="class counts"):
        build_cm(CMOptions(), MethodBuildContext(class_counts=torch.tensor([1, 2]), num_classes=3, schedule=None))
    with pytest.raises(ValidationError):
        CMOptions(rho=0)


def test_presets_compose_t2h_and_cm():
    from cbdm_core.config import parse_train_config
    from cbdm_core.presets_registry import load_preset

    for name, dataset in (("cm-cifar10lt-if100", "cifar10-lt"), ("cm-cifar100lt-if100", "cifar100-lt")):
        cfg = parse_train_config(load_preset(name), name)
        t2h, cm = cfg.objective.methods
        opts = CMOptions(**cm.options)
        assert t2h.name == "t2h" and cm.name == "cm" and cfg.data.dataset == dataset and cfg.data.imb_factor == 0.01
        assert (opts.rho, opts.parts, opts.w_con, opts.w_div, opts.sample_with) == (0.1, ["up"], 1.0, 0.2, "on")
        assert (cfg.preview.sampler, cfg.preview.steps, cfg.preview.guidance) == ("ddim", 50, 1.5)
        assert (cfg.optim.batch_size, cfg.optim.steps, cfg.optim.lr) == (64, 300000, 2e-4)
        assert cfg.model.options["ch"] == 128 and cfg.model.options["ch_mult"] == [1, 2, 2, 2]


def test_training_preview_merges_into_a_copy_never_the_ema():
    from types import SimpleNamespace

    from cbdm_core.training.trainer import Trainer

    ema = tiny_unet()
    cm = build(sample_with="merged")
    cm.attach(ema)
    randomise_b(ema)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    net = Trainer._for_sampling(SimpleNamespace(methods=[cm]), ema)
    assert net is not ema and not net.cm_adapters.switch.enabled and ema.cm_adapters.switch.enabled
    assert all(torch.equal(before[k], v) for k, v in ema.state_dict().items())
    conv = "upblocks.0.block1.2.weight"
    assert not torch.equal(net.state_dict()[conv], before[conv])  # merged there, not here
