"""Samplers and metrics declare their options as pydantic models; the engine validates them."""

from __future__ import annotations

import pytest
import torch

from cbdm_core.errors import CbdmError
from cbdm_core.interfaces import validate_options
from cbdm_core.registry import get_registry
from cbdm_core.sampling import sample
from cbdm_core.schedules import LinearSchedule


class _Zero(torch.nn.Module):
    num_classes = 2

    def forward(self, x, t, y):
        return torch.zeros_like(x)


@pytest.mark.parametrize("kind", ["sampler", "metric"])
def test_every_builtin_declares_an_options_model(kind):
    reg = get_registry()
    for name in reg.names(kind):
        comp = reg.get(kind, name)
        if comp.plugin.startswith("cbdm:"):
            assert comp.obj.options_model is not None, f"{kind} {name} has no options model"
            assert comp.obj.options_model.model_config.get("extra") == "forbid"


def test_sampler_options_are_validated_and_coerced():
    x = torch.randn(2, 1, 4, 4)
    y = torch.tensor([0, 1])
    sched = LinearSchedule(T=20)
    with pytest.raises(CbdmError, match="unknown option 'spacng' of sampler 'ddim'; valid options: boost_gamma, skip, spacing"):
        sample(_Zero(), sched, x, y, sampler="ddim", steps=4, spacng="uniform")
    with pytest.raises(CbdmError, match="var_type"):
        sample(_Zero(), sched, x, y, sampler="ddpm", var_type="fixedhuge")
    # a valid option still reaches the sampler: trailing and uniform spacing give other results
    a = sample(_Zero(), sched, x, y, sampler="ddim", steps=4, spacing="trailing")
    b = sample(_Zero(), sched, x, y, sampler="ddim", steps=4, spacing="uniform")
    assert not torch.allclose(a, b)


def test_metric_options_keep_defaults_and_reject_bad_values():
    spec = get_registry().get("metric", "kid").obj
    assert validate_options(spec.options_model, {"subset_size": "50"}, "metric 'kid'") == {"subset_size": 50}
    assert validate_options(spec.options_model, {}, "metric 'kid'") == {}  # the function's defaults stay
    with pytest.raises(CbdmError, match="subset_size"):
        validate_options(spec.options_model, {"subset_size": 1}, "metric 'kid'")
    mem = get_registry().get("metric", "memorization").obj
    with pytest.raises(CbdmError, match="unknown option 'k' of metric 'memorization'; valid options: threshold"):
        validate_options(mem.options_model, {"k": 3}, "metric 'memorization'")


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_plugin_options_refuse_non_finite_numbers(value):
    from pydantic import BaseModel

    class Loose(BaseModel):  # a third-party model that does not forbid inf/nan itself
        scale: float = 1.0

    with pytest.raises(CbdmError, match="scale of sampler 'x': must be a finite number"):
        validate_options(Loose, {"scale": value}, "sampler 'x'")
    assert validate_options(Loose, {"scale": "2.5"}, "sampler 'x'") == {"scale": 2.5}
