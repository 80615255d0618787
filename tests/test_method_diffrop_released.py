"""DiffROP's ``form: released`` against the rule of CCUA's released SiT code, re-derived here.

Source (read, not copied): C-Fun/Contrastive-Conditional-Unconditional-Alignment-for-Long-tailed-
Diffusion-Model@baff9def6cfd553d4452d10eab0bac66ec2727aa, CCUA-SiT/SiT/transport/transport.py:171-180
(a random permutation ``idx`` of the batch; ``mask = y[idx] != y``; ``mse`` = mean over every
non-batch dimension of the squared difference of the two rows' outputs; ``d`` = batch mean of
``t * mask * mse``; term ``1 / (1 + d)``), :232 and :235 (added to the loss times ``--diffrop``),
CCUA-SiT/SiT/train.py:374 (``--diffrop`` default 0.1) and :267 (the loss is the batch mean).
SiT's time ``t`` (data at ``t = 1``, transport/path.py:23-29) becomes ``1 - t/T`` here.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import yaml

from cbdm_core.methods.base import MethodBuildContext
from cbdm_core.methods.diffrop import DiffROPOptions, build_diffrop
from cbdm_core.methods.diffrop_released import permutation_from_keys, released_overlap

from .helpers import METHOD_TINY, cli_fails, cli_ok, make_ctx, run_step, tiny_unet, train_run


def released_reference(pred: torch.Tensor, y: torch.Tensor, w: torch.Tensor, perm: list[int]) -> torch.Tensor:
    """The released term, one row at a time: ``1 / (1 + sum_i w_i [y_j != y_i] msd(i, j) / B)``, j = perm(i)."""
    b = pred.shape[0]
    total = pred.new_zeros(())
    for i in range(b):
        j = perm[i]
        if int(y[j]) != int(y[i]):  # the mask: pairs of one class add nothing, but still count in B
            total = total + w[i] * ((pred[i] - pred[j]) ** 2).sum() / pred[i].numel()
    return 1.0 / (1.0 + total / b)


def test_released_overlap_matches_the_rule_and_its_gradient_on_hand_made_predictions():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 0, 2, 1])
    w = torch.tensor([0.9, 0.1, 0.5, 1.0, 0.3], dtype=torch.float64)
    perm = [2, 4, 0, 1, 3]  # rows 0<->2 share class 0 (masked); 1->4 share class 1 (masked)
    term, d = released_overlap(pred, y, w, torch.tensor(perm))
    ref = released_reference(pred, y, w, perm)
    term_v, ref_v = float(term.detach()), float(ref.detach())
    assert 0 < float(d.detach()) and math.isclose(term_v, ref_v, rel_tol=1e-12, abs_tol=1e-12)
    grad, = torch.autograd.grad(term, pred)
    grad_ref, = torch.autograd.grad(ref, pred)
    assert torch.allclose(grad, grad_ref, rtol=1e-9, atol=1e-12)
    # Rows 0 and 2 only meet each other (same class, masked): no gradient; rows 1, 3, 4 are pushed apart.
    assert float(grad[[0, 2]].abs().sum()) == 0 and all(float(grad[i].abs().sum()) > 0 for i in (1, 3, 4))
    same = released_overlap(pred, torch.zeros(5, dtype=torch.long), w, torch.tensor(perm))[0]
    assert float(same.detach()) == 1.0  # one class in the batch: every pair masked, d = 0


def randomised_unet():
    """The tiny U-Net with every weight redrawn (its zero output layer would make all predictions 0)."""
    model = tiny_unet()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_released_form_equals_the_re_derived_rule_in_loss_and_gradient():
    model = randomised_unet()
    ctx = make_ctx(model, keep=torch.tensor([True, True, False, True, True, True]))
    bctx = MethodBuildContext(class_counts=ctx.class_counts, num_classes=3, schedule=ctx.schedule)
    method = build_diffrop(DiffROPOptions(form="released", weight=0.7), bctx)
    torch.manual_seed(4)
    total, terms, _ = run_step(model, [method], ctx)
    model.zero_grad()
    total.backward()
    got = grads(model)
    perm = [int(i) for i in method.last_permutation]
    assert sorted(perm) == list(range(6)) and perm != list(range(6))
    masked = [int(ctx.y[perm[i]]) == int(ctx.y[i]) for i in range(6)]
    assert any(masked) and not all(masked)  # the draw exercises both sides of the mask

    # The same step by hand: the network on the fed labels (null on the dropped row), DDPM's loss,
    # and the released term over the TRUE labels of all rows, dropped or not.
    model.zero_grad()
    pred = model(ctx.x_t, ctx.time, ctx.y_in).float()
    w = 1.0 - ctx.t.float() / ctx.schedule.num_timesteps
    ref_term = released_reference(pred, ctx.y, w, perm)
    ref_total = ((pred - ctx.target) ** 2).mean() + 0.7 * ref_term
    ref_total.backward()
    assert float(terms["diffrop_dist"]) > 0
    assert math.isclose(float(terms["diffrop"]), float(ref_term), rel_tol=1e-6)
    assert math.isclose(float(total), float(ref_total), rel_tol=1e-6)
    for a, b in zip(got, grads(model)):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def test_released_weight_defaults_to_the_released_value_and_zero_draws_nothing():
    assert DiffROPOptions(form="released").resolved_weight() == 0.1  # train.py:374
    assert DiffROPOptions().resolved_weight() == 0.01  # kl-hinge: ours, unchanged
    model = tiny_unet()
    ctx = make_ctx(model)
    bctx = MethodBuildContext(class_counts=ctx.class_counts, num_classes=3, schedule=ctx.schedule)
    method = build_diffrop(DiffROPOptions(form="released", weight=0.0), bctx)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert method.extra_labels(ctx) is None and torch.equal(before, torch.get_rng_state())
    plain, _, _ = run_step(model, [], ctx)
    total, terms, _ = run_step(model, [method], ctx)
    assert torch.equal(plain, total) and float(terms["diffrop"]) == 0.0


def test_the_pairing_is_a_uniform_permutation_of_each_process_rows():
    torch.manual_seed(0)
    seen = {}
    for _ in range(6000):
        p = tuple(int(i) for i in permutation_from_keys(torch.rand(8), 3))  # a rank's 3 rows of a batch of 8
        seen[p] = seen.get(p, 0) + 1
    assert set(seen) == set(itertools.permutations(range(3)))
    assert all(abs(n / 6000 - 1 / 6) < 0.03 for n in seen.values())


@pytest.mark.parametrize("option, match", [("margin=2", "margin applies only to form kl-hinge"),
                                           ("y_dist=train", "y_dist applies only to form kl-hinge"),
                                           ("weight=-1", "weight"), ("time_power=x", "time_power")])
def test_released_options_fail_in_one_line(option, match, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(METHOD_TINY))
    cli_fails("train", "--config", config, "--out", tmp_path / "run", "--no-progress", "--method", "diffrop",
              "-M", "form=released", "-M", option, match=match)


def test_unknown_form_fails_in_one_line(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(METHOD_TINY))
    cli_fails("train", "--config", config, "--out", tmp_path / "run", "--no-progress", "--method", "diffrop",
              "-M", "form=paper", match="form")


def test_released_form_trains_and_is_listed(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(METHOD_TINY))
    run = tmp_path / "run"
    train_run(config, run, "--method", "diffrop", "-M", "form=released", "--steps", "1")
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"diffrop", "diffrop_dist"} <= set(record) and 0.0 < record["diffrop"] <= 1.0
    rows = {r["name"]: r for r in json.loads(cli_ok("methods", "--json").output)}
    options = {o["name"]: o for o in rows["diffrop"]["options"]}
    assert options["form"]["default"] == "kl-hinge" and options["form"]["type"] == "kl-hinge|released"
    assert "baff9def6cfd553d4452d10eab0bac66ec2727aa" in rows["diffrop"]["paper"]


def test_each_torchrun_rank_pairs_its_own_rows_with_the_same_global_draws():
    """Under ``torchrun`` (ShardedObjective, no process group needed): the keys are drawn on the
    global batch, each rank pairs only its rows (as each released GPU permutes its local batch),
    and both ranks leave the random stream in the same state."""
    from cbdm_core.objectives import DiffusionObjective
    from cbdm_core.schedules import LinearSchedule
    from cbdm_core.training.distributed import ShardedObjective

    model = randomised_unet()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 1, 8, 8, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    states, terms = [], []
    for lo, hi in ((0, 3), (3, 6)):
        bctx = MethodBuildContext(class_counts=torch.tensor([10, 20, 30]), num_classes=3,
                                  schedule=LinearSchedule(T=50))
        method = build_diffrop(DiffROPOptions(form="released"), bctx)
        objective = DiffusionObjective(bctx.schedule, 3, [method], class_counts=bctx.class_counts)
        torch.manual_seed(7)
        out = ShardedObjective(objective, lo, hi)(model, x0, y)
        states.append(torch.get_rng_state())
        assert method.keys.shape == (6,)  # drawn for the global batch, in prepare
        assert sorted(int(i) for i in method.last_permutation) == [0, 1, 2]  # paired among the rank's rows
        terms.append(float(out.terms["diffrop"]))
    assert torch.equal(states[0], states[1])
    assert all(0 < v <= 1 for v in terms)
