"""Reliability round four: what a first-user and a plugin-author audit found (session 14).

Each test reproduces a reported failure; it failed before the fix.
"""

from __future__ import annotations

import re

import pytest
import torch

from cbdm_core import registry
from cbdm_core.errors import CbdmError
from cbdm_core.hookspecs import hookimpl
from cbdm_core.interfaces import SamplerSpec
from cbdm_core.methods.base import MethodSpec
from cbdm_core.methods.cbdm import CBDMOptions
from cbdm_core.sampling import sample
from cbdm_core.schedules import LinearSchedule

from .helpers import cli_fails, cli_ok, tiny_unet


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_overwrite_refused_for_its_config_keeps_the_previous_run(tmp_path, tiny_config):
    """`--overwrite` removed the old run before the new config was built: a refused new run left neither."""
    cfg, run = tiny_config.write(tmp_path), tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2")
    before = {p: (run / p).read_bytes() for p in _listing(run)}
    assert any(p.startswith("checkpoints/") for p in before)
    cli_fails("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2", "--overwrite",
              "--set", "model.options.ch=6", match="divisible")
    assert {p: (run / p).read_bytes() for p in _listing(run)} == before
    cli_ok("sample", run, "--sampler", "ddim", "--steps", "2", "-n", "3", "--no-progress")


# -- a plugin sampler that returns the wrong batch -------------------------------------------------------------

class _OneImageSampler:
    """A sampler plugin with a slip: it returns one image for the whole batch."""

    @hookimpl
    def register_components(self, register):
        register("sampler", "one-image", SamplerSpec(run=lambda model, schedule, x_T, y, **kw: x_T[:1].clone(),
                                                     default_steps=2))


@pytest.fixture
def one_image_registry():
    registry._DEFAULT = registry.build_registry([_OneImageSampler()])
    yield
    registry.reset_registry()


def test_a_sampler_returning_the_wrong_batch_is_one_clear_error(tmp_path, tiny_config, one_image_registry):
    """Its one image was broadcast by numpy into every image of the shard: N copies, 'N images' reported."""
    cfg, run = tiny_config.write(tmp_path), tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2")
    cli_fails("sample", run, "--sampler", "one-image", "-n", "4", "--no-progress",
              match="the one-image sampler returned shape (1, 1, 8, 8)")
    assert not list(run.glob("samples-one-image*/shard-*.npz"))
    with pytest.raises(CbdmError, match="must return float images shaped like its x_T"):
        sample(tiny_unet(3).eval(), LinearSchedule(T=100), torch.randn(4, 1, 8, 8), torch.arange(4) % 3,
               sampler="one-image")


# -- registrations that break their kind's contract -----------------------------------------------------------

class _Broken:
    def __init__(self, kind, name, obj):
        self.kind, self.name, self.obj = kind, name, obj

    @hookimpl
    def register_components(self, register):
        register(self.kind, self.name, self.obj)


@pytest.mark.parametrize("kind, name, obj, match", [
    ("method", "plain-function", lambda options, ctx: None, "without 'options_model'; register a MethodSpec"),
    ("method", "no-options", MethodSpec(options_model=None, build=lambda o, c: None), "options_model must be"),
    ("sampler", "plain-function", lambda *a, **k: None, "without 'run'; register a SamplerSpec"),
    ("backbone", "dict", {"build": None}, "without 'options_model'; register a BackboneSpec"),
    ("label_distribution", "not-callable", [0.5, 0.5], "not a callable factory"),
    ("guidance", "not-callable", 3, "not a GuidanceSpec or a callable"),
    ("method", "a+b", MethodSpec(options_model=CBDMOptions, build=lambda o, c: None), "cannot be selected"),
    ("method", "ddpm", MethodSpec(options_model=CBDMOptions, build=lambda o, c: None), "cannot be selected"),
    ("label_distribution", "x:y", lambda counts, arg: counts, "cannot be selected"),
])
def test_a_registration_that_breaks_its_contract_is_refused(kind, name, obj, match):
    """Accepted before: `cbdm methods` then failed with an AttributeError for everyone, or the name
    could never be selected (`a:b` is looked up as `a`; `--method ddpm` means no method)."""
    with pytest.raises(CbdmError, match=re.escape(match)):
        registry.build_registry([_Broken(kind, name, obj)])


def test_an_entry_point_plugin_that_breaks_a_contract_is_left_out_and_methods_still_lists(monkeypatch):
    broken = _Broken("method", "plain-function", lambda options, ctx: None)
    monkeypatch.setattr(registry, "_entry_point_plugins",
                        lambda pm, reg: (pm.register(broken, name="broken"), {id(broken): ("brokenpkg", "0.1")})[1])
    reg = registry.build_registry()
    assert [p.plugin for p in reg.problems] == ["brokenpkg:broken"]
    assert "register a MethodSpec" in reg.problems[0].error
    assert "plain-function" not in reg.names("method")
