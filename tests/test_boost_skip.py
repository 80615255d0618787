"""Boost-and-Skip (``-S boost_gamma=G -S skip=D`` on the ddpm and ddim samplers)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from cbdm_core.sampling import sample, sample_generators
from cbdm_core.sampling.shards import load_samples
from cbdm_core.schedules import LinearSchedule
from tests.helpers import TINY, LinearDenoiser, cli_fails, cli_ok


def _released_bns_ddim(model, schedule, noise, y, *, steps, gamma, delta_t):
    """soobin-um/BnS @ d4d1390, guided_diffusion/gaussian_diffusion.py, re-derived:

    * ddim_sample_loop_progressive lines 711-713: img = noise * gamma;
    * lines 715-719: indices = list(range(num_timesteps))[::-1][Delta_t:] over the respaced
      timesteps (respace.py, "ddimS": every T // S-th training step, from 0);
    * ddim_sample with eta = 0 (no clipping): x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) eps,
      ab_prev = 1 after the last index.
    """
    respaced = list(range(0, schedule.num_timesteps, schedule.num_timesteps // steps))[:steps]
    ab = schedule.alphas_cumprod
    img = noise * gamma
    indices = list(range(len(respaced)))[::-1][delta_t:]
    for i in indices:
        t = respaced[i]
        eps = model(img, torch.full((img.shape[0],), t), y)
        x0 = (img - math.sqrt(1 - ab[t]) * eps) / math.sqrt(ab[t])
        ab_prev = float(ab[respaced[i - 1]]) if i > 0 else 1.0
        img = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
    return img


@pytest.mark.parametrize("gamma,delta_t", [(4.0, 3), (2.5, 1), (1.0, 0)])
def test_ddim_equals_the_released_boost_and_skip_loop(gamma, delta_t):
    model = LinearDenoiser(num_classes=3).double()
    schedule = LinearSchedule(T=100)
    noise = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    with torch.no_grad():
        got = sample(model, schedule, noise, y, sampler="ddim", steps=10, boost_gamma=gamma, skip=delta_t)
        want = _released_bns_ddim(model, schedule, noise, y, steps=10, gamma=gamma, delta_t=delta_t)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert model.calls == [3] * (2 * (10 - delta_t))  # both runs visited 10 - Delta_t steps


def test_ddpm_starts_boosted_and_skips_the_first_timesteps():
    """The rule of p_sample_loop_progressive (same file, lines 523-531): the first network call
    sees gamma * noise at timestep T - 1 - Delta_t, then every timestep down to 0."""
    seen = []

    class Recorder(LinearDenoiser):
        def forward(self, x, t, y):
            seen.append((int(t[0]), x.clone()))
            return super().forward(x, t, y)

    schedule, noise = LinearSchedule(T=20), torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    sample(Recorder(), schedule, noise, torch.tensor([0, 1]), sampler="ddpm", boost_gamma=3.0, skip=4,
           generator=sample_generators(0, [0, 1]))
    assert [t for t, _ in seen] == list(range(20))[::-1][4:]
    torch.testing.assert_close(seen[0][1], noise * 3.0)


def test_defaults_are_plain_sampling_and_bad_values_are_refused():
    model, schedule = LinearDenoiser(num_classes=3), LinearSchedule(T=30)
    noise, y = torch.randn(2, 1, 2, 2), torch.tensor([0, 1])
    for sampler in ("ddim", "ddpm"):
        kw = {"steps": 5} if sampler == "ddim" else {}
        a = sample(model, schedule, noise, y, sampler=sampler, generator=sample_generators(0, [0, 1]), **kw)
        b = sample(model, schedule, noise, y, sampler=sampler, generator=sample_generators(0, [0, 1]),
                   boost_gamma=2.0, skip=1, **kw)
        c = sample(model, schedule, noise, y, sampler=sampler, generator=sample_generators(0, [0, 1]),
                   boost_gamma=1.0, skip=0, **kw)
        assert torch.equal(a, c) and not torch.equal(a, b)
    with pytest.raises(Exception, match="skip must lie in 0..4"):
        sample(model, schedule, noise, y, sampler="ddim", steps=5, skip=5)
    with pytest.raises(Exception, match="boost_gamma"):
        sample(model, schedule, noise, y, sampler="ddim", steps=5, boost_gamma=0.0)


def test_cbdm_sample_records_the_options_and_resumes(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    cli_ok("train", "--config", tmp_path / "tiny.yaml", "--out", tmp_path / "run", "--no-progress")
    cmd = ("sample", tmp_path / "run", "--steps", 4, "-n", 10, "--no-progress", "-S", "boost_gamma=2.5",
           "-S", "skip=1", "--out", tmp_path / "bns")
    cli_ok(*cmd)
    settings = json.loads((tmp_path / "bns" / "manifest.json").read_text())["settings"]
    assert settings["sampler_options"] == {"boost_gamma": 2.5, "skip": 1}
    assert "0 written, 1 kept" in cli_ok(*cmd).output
    _, labels = load_samples(tmp_path / "bns")
    assert sorted(labels.tolist()) == list(range(10))  # class-balanced plan, one per class
    cli_fails("sample", tmp_path / "run", "--steps", 4, "-n", 10, "-S", "skip=4", "--out", tmp_path / "x",
              match="skip must lie in 0..3")


def test_a_boosted_start_on_deterministic_or_unclipped_ddim_warns():
    """The authors sample ancestrally with x_0 clipped; eta 0 (or no clipping) with gamma > 1
    kept the boosted noise to the last step on digits-lt (docs/results.md), so it warns."""
    import warnings as _w

    from cbdm_core.sampling.ddim import ddim_sample

    schedule = LinearSchedule(T=100)
    model, noise, y = LinearDenoiser(num_classes=3), torch.randn(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)

    with pytest.warns(UserWarning, match="ancestrally"):
        ddim_sample(model, schedule, noise, y, steps=5, eta=0.0, clip_denoised=True, boost_gamma=2.0, skip=1)
    with pytest.warns(UserWarning, match="clip=off"):
        ddim_sample(model, schedule, noise, y, steps=5, eta=1.0, boost_gamma=2.0, skip=1,
                    generator=torch.Generator().manual_seed(0))
    with _w.catch_warnings():
        _w.simplefilter("error")
        ddim_sample(model, schedule, noise, y, steps=5, eta=1.0, clip_denoised=True, boost_gamma=2.0, skip=1,
                    generator=torch.Generator().manual_seed(0))
        ddim_sample(model, schedule, noise, y, steps=5, eta=0.0, boost_gamma=1.0)
