"""Classifier-free guidance: one batched pass, same numbers as two passes."""

from __future__ import annotations

import re

import pytest
import torch

from cbdm_core import registry
from cbdm_core.errors import CbdmError
from cbdm_core.hookspecs import hookimpl
from cbdm_core.interfaces import GuidanceSpec
from cbdm_core.registry import lookup
from cbdm_core.sampling.settings import SamplingSettings
from cbdm_core.sampling import cfg_denoiser, ddim_sample, sample, unguided_denoiser
from cbdm_core.schedules import LinearSchedule

SCHEDULE = LinearSchedule(T=100, beta_T=0.2)


class LinearToy:
    """eps = a_t * x + emb[y]: label dependent, null label included; records every call."""

    def __init__(self, num_classes: int = 3, dim: int = 4):
        g = torch.Generator().manual_seed(0)
        self.num_classes = num_classes
        self.emb = torch.randn(num_classes + 1, dim, generator=g)
        self.scale = torch.linspace(0.1, 0.9, SCHEDULE.num_timesteps)
        self.batch_sizes: list[int] = []

    def __call__(self, x, t, y):
        self.batch_sizes.append(int(x.shape[0]))
        return self.scale[t].view(-1, 1) * x + self.emb[y]


def _inputs(b: int = 5):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 4, generator=g), torch.full((b,), 40), torch.tensor([0, 1, 2, 1, 0][:b])


def test_cfg_is_one_batched_pass_equal_to_two_passes():
    model = LinearToy()
    x, t, y = _inputs()
    w = 2.5
    out = cfg_denoiser(model, w, model.num_classes)(x, t, y)
    assert model.batch_sizes == [2 * len(y)]
    ref_model = LinearToy()
    cond = ref_model(x, t, y)
    uncond = ref_model(x, t, torch.full_like(y, 3))
    torch.testing.assert_close(out, (1 + w) * cond - w * uncond)


def test_cfg_null_rows_get_the_unconditional_eps():
    model = LinearToy()
    x, t, _ = _inputs()
    y = torch.tensor([3, 0, 3, 2, 1])
    out = cfg_denoiser(model, 4.0, 3)(x, t, y)
    uncond = LinearToy()(x, t, torch.full_like(y, 3))
    assert torch.equal(out[y == 3], uncond[y == 3])


def test_cfg_w0_is_a_single_conditional_pass():
    model = LinearToy()
    x, t, y = _inputs()
    out = cfg_denoiser(model, 0.0, 3)(x, t, y)
    assert model.batch_sizes == [len(y)]
    assert torch.equal(out, LinearToy()(x, t, y))


def test_sample_uses_batched_cfg_and_plain_pass_at_w0():
    x, _, y = _inputs()
    plain = LinearToy()
    a = sample(plain, SCHEDULE, x, y, steps=10)
    assert plain.batch_sizes == [5] * 10
    b = ddim_sample(LinearToy(), SCHEDULE, x, y, steps=10)
    assert torch.equal(a, b)

    guided = LinearToy()
    c = sample(guided, SCHEDULE, x, y, steps=10, guidance=1.5)
    assert guided.batch_sizes == [10] * 10
    ref = ddim_sample(cfg_denoiser(LinearToy(), 1.5, 3), SCHEDULE, x, y, steps=10)
    assert torch.equal(c, ref)
    assert not torch.allclose(a, c)


def test_none_guidance_passes_through():
    model = LinearToy()
    x, t, y = _inputs()
    assert torch.equal(unguided_denoiser(model, 0.0, 3)(x, t, y), LinearToy()(x, t, y))
    with pytest.raises(CbdmError, match="'none' cannot apply a guidance scale"):
        unguided_denoiser(model, 1.0, 3)


def test_guidance_errors():
    x, _, y = _inputs()
    with pytest.raises(CbdmError, match="guidance must be >= 0"):
        sample(LinearToy(), SCHEDULE, x, y, steps=2, guidance=-1.0)

    class NoClasses:
        def __call__(self, x, t, y):
            return x

    with pytest.raises(CbdmError, match="null label"):
        sample(NoClasses(), SCHEDULE, x, y, steps=2, guidance=1.0)


def test_registry_lookup_gives_the_builtins():
    assert lookup("guidance", "cfg") is cfg_denoiser
    assert lookup("guidance", "none") is unguided_denoiser


class _ScaledPlugin:
    """Registers ``scaled``: cfg whose output is multiplied by the option ``gain``."""

    @staticmethod
    def build(model, scale, null_label, gain: float = 1.0):
        inner = cfg_denoiser(model, scale, null_label)
        return lambda x, t, y: gain * inner(x, t, y)

    @hookimpl
    def register_components(self, register):
        from pydantic import BaseModel, ConfigDict

        class Options(BaseModel):
            model_config = ConfigDict(extra="forbid")
            gain: float = 1.0

        register("guidance", "scaled", GuidanceSpec(build=self.build, options_model=Options))


@pytest.fixture
def scaled_registry():
    registry._DEFAULT = registry.build_registry([_ScaledPlugin()])
    yield
    registry.reset_registry()


def test_guidance_options_reach_the_guidance(scaled_registry):
    x, _, y = _inputs()
    run = lambda **kw: sample(LinearToy(), SCHEDULE, x, y, steps=3, guidance=1.0, guidance_method="scaled", **kw)  # noqa: E731
    default, given = run(), run(guidance_options={"gain": 0.5})
    assert torch.equal(default, run(guidance_options={"gain": 1}))  # coerced to the model's float
    assert not torch.allclose(default, given)
    settings = SamplingSettings(guidance=1.0, guidance_method="scaled", guidance_options={"gain": 0.5}, steps=3)
    assert settings.sample_kwargs()["guidance_options"] == {"gain": 0.5}  # what training previews pass on
    assert torch.equal(sample(LinearToy(), SCHEDULE, x, y, **settings.sample_kwargs()), given)


def test_guidance_option_errors_are_one_line(scaled_registry):
    x, _, y = _inputs()
    cases = [("scaled", {"gane": 2}, "unknown option 'gane' of guidance 'scaled'; valid options: gain"),
             ("scaled", {"gain": "x"}, "invalid option gain of guidance 'scaled'"),
             ("cfg", {"gain": 2}, "guidance 'cfg' takes no options; got 'gain'"),
             ("scaled:0.5", {}, "a guidance takes named options, not an argument after ':'")]
    for name, options, message in cases:
        for w in (0.0, 1.0):  # refused also where the guidance is not applied
            with pytest.raises(CbdmError, match=re.escape(message)):
                sample(LinearToy(), SCHEDULE, x, y, steps=2, guidance=w, guidance_method=name,
                       guidance_options=options)
