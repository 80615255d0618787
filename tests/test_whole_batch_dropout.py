"""Issue 26 item 5: the CORAL and CM presets drop labels for the whole batch, as the released
code does, and CORAL then contributes nothing on a dropped batch (its SupCon is skipped)."""

from __future__ import annotations

import pytest
import torch

from cbdm_core.config import parse_train_config
from cbdm_core.methods.base import MethodBuildContext
from cbdm_core.methods.coral import CoralOptions, build_coral
from cbdm_core.objectives import DiffusionObjective
from cbdm_core.presets_registry import load_preset, preset_names
from cbdm_core.schedules import LinearSchedule

from .helpers import make_ctx, run_step, tiny_unet

PUBLISHED = [n for n in preset_names() if n.startswith(("coral-", "cm-"))]


def test_there_are_coral_and_cm_presets():
    assert {p.split("-")[0] for p in PUBLISHED} == {"coral", "cm"}


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_presets_drop_the_whole_batch(name):
    objective = parse_train_config(load_preset(name), f"preset {name}").objective
    assert objective.drop_whole_batch and objective.p_uncond == pytest.approx(0.1)


def test_whole_batch_keep_mask_is_all_or_nothing_with_probability_p():
    objective = DiffusionObjective(LinearSchedule(T=10), 3, p_uncond=0.1, drop_whole_batch=True)
    torch.manual_seed(0)
    masks = [objective.sample_keep_mask(16, torch.device("cpu")) for _ in range(4000)]
    assert all(bool(m.all()) or not bool(m.any()) for m in masks)
    dropped = sum(not bool(m.any()) for m in masks) / len(masks)
    assert abs(dropped - 0.1) < 0.015  # 3 standard errors of a binomial(4000, 0.1) share


def _coral_step(keep: torch.Tensor):
    model = tiny_unet()
    ctx = make_ctx(model, keep=keep)
    coral = build_coral(CoralOptions(weight=1.0, tau_sc=0.5), MethodBuildContext(
        class_counts=ctx.class_counts, num_classes=3, schedule=ctx.schedule))
    coral.attach(model)
    total, terms, _ = run_step(model, [coral], ctx)
    model.zero_grad()
    total.backward()
    head_grad = sum(float(p.grad.abs().sum()) for p in model.coral_head.parameters() if p.grad is not None)
    return terms, head_grad


def test_coral_skips_supcon_on_a_dropped_batch():
    terms, head_grad = _coral_step(torch.zeros(6, dtype=torch.bool))
    assert float(terms["supcon"]) == 0.0 and float(terms["coral"]) == 0.0 and head_grad == 0.0
    terms, head_grad = _coral_step(torch.ones(6, dtype=torch.bool))  # a kept batch: the term is live
    assert float(terms["supcon"]) > 0 and head_grad > 0
