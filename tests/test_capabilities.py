"""Backbone capabilities (cbdm_core.interfaces): what methods declare, what backbones offer, one refusal."""

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from cbdm_core import registry
from cbdm_core.build import build_model, check_capabilities
from cbdm_core.config import TrainConfig
from cbdm_core.errors import CbdmError
from cbdm_core.hookspecs import hookimpl
from cbdm_core.interfaces import BackboneSpec, HasConvParts, HasFeatureTap, HasGeometry, missing_capabilities
from cbdm_core.registry import get_registry
from tests.helpers import TINY, cli_fails, tiny_unet

CAPABILITIES = (HasGeometry, HasFeatureTap, HasConvParts)


class _NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Plain(torch.nn.Module):
    """A denoiser with its geometry but neither a feature tap nor conv parts."""

    def __init__(self, image_size: int, channels: int, num_classes: int):
        super().__init__()
        self.image_size, self.channels, self.num_classes = image_size, channels, num_classes
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, t, y):
        return self.conv(x)


class _PlainPlugin:
    @hookimpl
    def register_components(self, register):
        register("backbone", "plain", BackboneSpec(
            options_model=_NoOptions,
            build=lambda o, *, image_size, channels, num_classes, **_: _Plain(image_size, channels, num_classes)))


@pytest.fixture
def plain_registry():
    registry._DEFAULT = registry.build_registry([_PlainPlugin()])
    yield
    registry.reset_registry()


def _tiny_backbones() -> dict[str, dict]:
    unet = TINY["model"]["options"]  # read only
    return {"unet": unet, "edm": {"inner": "unet", "inner_options": unet},
            "vit": {"size": "custom", "patch_size": 4, "depth": 1, "width": 16, "heads": 2},
            "genvit": {"patch_size": 4, "depth": 1, "width": 16, "heads": 2}}


def test_built_in_methods_declare_protocols_that_built_in_backbones_offer():
    reg = get_registry()
    names = ("cbdm", "t2h", "coral", "cm", "dispersive", "diffrop")
    declared = {name: reg.get("method", name).obj.requires for name in names}
    assert declared["coral"] == declared["dispersive"] == (HasFeatureTap,) and declared["cm"] == (HasConvParts,)
    assert declared["cbdm"] == declared["t2h"] == declared["diffrop"] == ()
    offered = {}
    for backbone, options in _tiny_backbones().items():
        cfg = TrainConfig.model_validate({"model": {"backbone": backbone, "options": options}})
        model = build_model(cfg, image_size=16, channels=1, num_classes=3)
        offered[backbone] = {cap for cap in CAPABILITIES if isinstance(model, cap)}
        assert HasGeometry in offered[backbone] and HasFeatureTap in offered[backbone], backbone
    # Only the convolutional backbones offer conv parts: cm on a ViT is refused (next tests).
    assert {b for b, caps in offered.items() if HasConvParts in caps} == {"unet", "edm"}
    assert missing_capabilities(tiny_unet(), CAPABILITIES) == []


def test_a_backbone_lacking_a_declared_capability_is_refused_in_one_line():
    vit = {"backbone": "vit", "options": _tiny_backbones()["vit"]}
    cfg = TrainConfig.model_validate({"model": vit, "objective": {"methods": [{"name": "coral"}, {"name": "cm"}]}})
    with pytest.raises(CbdmError, match=r"^method 'cm' needs a backbone with HasConvParts .*; backbone 'vit' "
                                        r"\(DiffusionViT\) has none$"):
        build_model(cfg, image_size=8, channels=1, num_classes=3)
    coral_only = TrainConfig.model_validate({"model": vit, "objective": {"methods": [{"name": "coral"}]}})
    check_capabilities(coral_only, build_model(coral_only, image_size=8, channels=1, num_classes=3))


def test_cbdm_train_refuses_coral_on_a_backbone_without_a_feature_tap(tmp_path, plain_registry, tiny_config):
    cfg = tiny_config.write(tmp_path, {"model": {"backbone": "plain"}, "model.options": {}})
    line = cli_fails("train", "--config", cfg, "--method", "coral", "--out", tmp_path / "run", "--no-progress",
                     match="method 'coral' needs a backbone with HasFeatureTap")
    assert "backbone 'plain' (_Plain) has none" in line
    assert not list((tmp_path / "run").glob("checkpoints/*.safetensors"))
