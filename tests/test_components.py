"""Names resolved once, at the edge (issue 28 item 1): ``build.resolve_components`` and the
label distributions that methods receive instead of reading the registry."""

from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from cbdm_core import hookimpl
from cbdm_core.build import check_components, component_plugins, label_distribution_probs, resolve_components
from cbdm_core.components import KIND_SPECS, Components
from cbdm_core.config import TrainConfig
from cbdm_core.errors import UnknownComponentError
from cbdm_core.methods.base import MethodBuildContext, MethodSpec, TrainingMethod
from cbdm_core.methods.cbdm import CBDMOptions, build_cbdm_regularizer
from cbdm_core.registry import KINDS, build_registry, get_registry
from cbdm_core.schedules import LinearSchedule

from tests.helpers import TINY


def test_every_kind_has_one_contract():
    assert set(KIND_SPECS) == set(KINDS)


def test_resolve_components_holds_the_registered_objects():
    cfg = TrainConfig.model_validate({**TINY, "objective": {"methods": [{"name": "cbdm", "options": {"tau": 0.002}}]}})
    reg = get_registry()
    c = resolve_components(cfg)
    assert isinstance(c, Components)
    assert c.backbone is reg.get("backbone", "unet").obj
    assert c.dataset is reg.get("dataset", "digits-lt").obj
    assert c.sampler is reg.get("sampler", "ddim").obj
    assert c.loss is reg.get("diffusion_loss", c.loss_name).obj and c.loss_name == "ddpm"
    assert [m.name for m in c.methods] == ["cbdm"] and c.methods[0].options.tau == 0.002
    assert c.backbone_options.ch == 8
    assert c.plugins == component_plugins(cfg)
    assert c.label_distribution("pow:0.5") is reg.get("label_distribution", "pow").obj


class _Opts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str = "bal"


class _UsesDistribution:
    """A plugin whose method names a label distribution in its options."""

    @hookimpl
    def register_components(self, register):
        register("method", "uses-dist", MethodSpec(options_model=_Opts, label_distribution_options=("target",),
                                                   build=lambda options, ctx: TrainingMethod()))


def test_an_unregistered_label_distribution_option_is_refused_at_the_edge():
    reg = build_registry(extra_plugins=[_UsesDistribution()])
    cfg = TrainConfig.model_validate({**TINY, "objective": {"methods": [
        {"name": "uses-dist", "options": {"target": "nope"}}]}})
    with pytest.raises(UnknownComponentError, match="unknown label distribution 'nope'; available: .*bal"):
        resolve_components(cfg, reg)
    ok = TrainConfig.model_validate({**TINY, "objective": {"methods": [
        {"name": "uses-dist", "options": {"target": "sqrt"}}]}})
    assert [m.name for m in resolve_components(ok, reg).methods] == ["uses-dist"]


def test_cbdm_y_dist_unregistered_fails_before_data():
    cfg = TrainConfig.model_validate({**TINY, "objective": {"methods": [{"name": "cbdm", "options": {"y_dist": "zzz"}}]}})
    with pytest.raises(UnknownComponentError, match="unknown label distribution 'zzz'"):
        check_components(cfg)


def test_methods_take_label_distributions_from_the_context():
    counts = torch.tensor([30.0, 10.0, 5.0])
    asked = []

    def resolver(name, class_counts):
        asked.append(name)
        return torch.tensor([0.5, 0.3, 0.2])

    ctx = MethodBuildContext(class_counts=counts, num_classes=3, schedule=LinearSchedule(T=10),
                             label_distribution=resolver)
    reg = build_cbdm_regularizer(CBDMOptions(y_dist="sqrt"), ctx)
    assert asked == ["sqrt"] and torch.equal(reg.probs, torch.tensor([0.5, 0.3, 0.2]))
    # The edge's resolver gives what a hand-built context (no resolver) gives.
    edge = MethodBuildContext(class_counts=counts, num_classes=3, schedule=None,
                              label_distribution=label_distribution_probs())
    plain = MethodBuildContext(class_counts=counts, num_classes=3, schedule=None)
    assert torch.equal(edge.probs("pow:0.3"), plain.probs("pow:0.3"))
    assert not torch.equal(edge.probs("pow:0.3"), edge.probs("bal"))
