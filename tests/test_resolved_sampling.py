"""Issue 28: a sampling job's names are resolved once at the edge (``api.resolve_sampling``)
into a ``ResolvedSampling``; the layers below sample from it without the registry."""

from __future__ import annotations

import pytest
import torch

from cbdm_core.errors import CbdmError
from cbdm_core.registry import lookup
from cbdm_core.sampling.api import resolve_sampling, sample
from cbdm_core.sampling.core import sample_resolved
from cbdm_core.sampling.noise import sample_generators
from cbdm_core.sampling.settings import SamplerSettings, SamplingSettings
from cbdm_core.schedules import LinearSchedule

SCHEDULE = LinearSchedule(T=20)


class _Toy:
    """A deterministic denoiser whose guided and unguided predictions differ."""

    num_classes = 3

    def __call__(self, x, t, y):
        return 0.3 * x + 0.05 * y.view(-1, 1, 1, 1).float() + 1e-3 * t.view(-1, 1, 1, 1).float()


def test_resolve_sampling_looks_up_the_sampler_and_binds_the_guidance():
    r = resolve_sampling(SamplingSettings(sampler="ddpm", guidance=1.5, seed=4))
    assert r.sampler is lookup("sampler", "ddpm")
    assert isinstance(r.settings, SamplingSettings) and r.settings.seed == 4
    assert r.steps_for(SCHEDULE.num_timesteps) == 20  # ddpm: all T steps
    assert resolve_sampling(SamplerSettings(sampler="ddim")).steps_for(1000) == 100  # ddim's default, capped at T
    assert resolve_sampling(SamplerSettings(sampler="ddim")).steps_for(7) == 7
    assert resolve_sampling(SamplerSettings(steps=3)).with_steps(1000).settings.steps == 3


@pytest.mark.parametrize("settings, match", [
    (SamplerSettings(sampler="no-such-sampler"), "no-such-sampler"),
    (SamplerSettings(guidance_method="cfg:2"), "takes named options"),
    (SamplerSettings(guidance_options={"clip": 0.5}), "takes no options"),
])
def test_a_bad_name_or_option_fails_at_resolution(settings, match):
    with pytest.raises(CbdmError, match=match):
        resolve_sampling(settings)


def test_replace_keeps_the_names_and_refuses_others():
    r = resolve_sampling(SamplingSettings(guidance=1.0))
    assert r.replace(r.settings.model_copy(update={"guidance": 2.0, "num": 5})).settings.guidance == 2.0
    with pytest.raises(ValueError, match="resolve them"):
        r.replace(r.settings.model_copy(update={"sampler": "ddpm"}))


@pytest.mark.parametrize("sampler, guidance", [("ddim", 0.0), ("ddim", 2.0), ("ddpm", 1.0)])
def test_sampling_from_the_resolved_object_equals_sampling_by_name(sampler, guidance):
    settings = SamplerSettings(sampler=sampler, guidance=guidance, steps=20 if sampler == "ddpm" else 5)
    x_T, y = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 2, 3])
    by_name = sample(_Toy(), SCHEDULE, x_T, y, generator=sample_generators(1, [0, 1, 2]), **settings.sample_kwargs())
    resolved = sample_resolved(_Toy(), SCHEDULE, x_T, y, resolve_sampling(settings),
                               generator=sample_generators(1, [0, 1, 2]))
    assert torch.equal(by_name, resolved)
    assert not torch.equal(resolved, x_T)


def test_generate_samples_refuses_unresolved_settings_in_one_line(tmp_path):
    from cbdm_core.sampling.generate import generate_samples

    with pytest.raises(CbdmError, match=r"resolve_sampling\(settings\), got SamplingSettings"):
        generate_samples(object(), [0], out_dir=tmp_path / "s", sampling=SamplingSettings(sampler="ddim"))
    assert not (tmp_path / "s").exists()
