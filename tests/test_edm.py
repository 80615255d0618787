"""EDM: preconditioning, the sigma<->t mapping, the EDM loss with CBDM, the Heun sampler, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

from cbdm_cli.main import cli
from cbdm_core import registry
from cbdm_core.methods.cbdm import CBDMRegularizer
from cbdm_core.config import validate_component_options
from cbdm_core.edm import (EDMLoss, build_edm_loss, edm_coefficients, edm_loss_weight, schedule_sigmas,
                           sigma_to_t, sigma_to_timestep, t_to_sigma)
from cbdm_core.errors import CbdmError
from cbdm_core.nets.edm import C_NOISE_SCALE, EDMOptions, EDMPrecond, build_edm
from cbdm_core.objectives import DiffusionObjective
from cbdm_core.sampling import sample, sample_generators
from cbdm_core.sampling.heun import heun_sample, karras_sigmas
from cbdm_core.schedules import LinearSchedule

INNER = {"ch": 8, "ch_mult": [1, 2], "attn": [1], "num_res_blocks": 1, "dropout": 0.0, "num_groups": 4}


@pytest.fixture(autouse=True, scope="module")
def _edm_registered():
    # Before the entry points are installed, register the plugins by hand (no duplicates after).
    if "edm" not in registry.get_registry().names("backbone"):
        import cbdm_plugins.edm
        import cbdm_plugins.vit

        registry._DEFAULT = registry.build_registry([cbdm_plugins.edm, cbdm_plugins.vit])
    yield


class ZeroInner(nn.Module):
    """F = 0, recording its inputs."""

    num_classes, channels, image_size = 3, 1, 4

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t, y=None, cond=None):
        self.seen.append((x, t))
        return torch.zeros_like(x)


def tiny_edm(schedule=None, seed: int = 0) -> EDMPrecond:
    torch.manual_seed(seed)
    return build_edm(EDMOptions(inner_options=INNER), image_size=8, channels=1, num_classes=3,
                     schedule=schedule or LinearSchedule())


def _perturb(model: nn.Module, scale: float = 0.05) -> None:
    """Move zero-initialised output layers away from zero so every branch has a gradient."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


# -- preconditioning -----------------------------------------------------------------------
def test_coefficients_match_the_formulas():
    s = torch.tensor([0.01, 0.5, 3.0, 80.0], dtype=torch.float64)
    c = edm_coefficients(s, 0.5)
    assert torch.allclose(c["c_skip"], 0.25 / (s ** 2 + 0.25))
    assert torch.allclose(c["c_out"], s * 0.5 / (s ** 2 + 0.25).sqrt())
    assert torch.allclose(c["c_in"], 1 / (s ** 2 + 0.25).sqrt())
    assert torch.allclose(c["c_noise"], s.log() / 4)
    # The loss weight is 1 / c_out^2, so the effective target of F has unit weight.
    assert torch.allclose(edm_loss_weight(s, 0.5), 1 / c["c_out"] ** 2)


def test_denoiser_is_identity_at_tiny_sigma_and_c_skip_x_for_zero_inner():
    model = tiny_edm()
    _perturb(model)
    x = torch.randn(2, 1, 8, 8)
    y = torch.tensor([0, 3])
    with torch.no_grad():
        assert torch.allclose(model.denoise(x, torch.full((2,), 1e-6), y), x, atol=1e-4)
    inner = ZeroInner()
    edm = EDMPrecond(inner, LinearSchedule(), sigma_data=0.5)
    sigma = torch.tensor([0.1, 2.0])
    x = torch.randn(2, 1, 4, 4)
    d = edm.denoise(x, sigma, torch.tensor([0, 1]))
    c = edm_coefficients(sigma, 0.5)
    assert torch.allclose(d, c["c_skip"].view(-1, 1, 1, 1) * x)
    seen_x, seen_t = inner.seen[-1]
    assert torch.allclose(seen_x, c["c_in"].view(-1, 1, 1, 1) * x)
    assert torch.allclose(seen_t, C_NOISE_SCALE * sigma.log() / 4)


def test_eps_view_matches_the_native_denoiser():
    sched = LinearSchedule()
    model = tiny_edm(sched)
    _perturb(model)
    x_t = torch.randn(3, 1, 8, 8)
    t = torch.tensor([0, 400, 999])
    y = torch.tensor([0, 1, 3])
    with torch.no_grad():
        eps = model(x_t, t, y)
        ab = sched.alphas_cumprod[t].view(-1, 1, 1, 1)  # float64: 1 - ab is tiny at t = 0
        sigma = ((1 - ab) / ab).sqrt().float()
        x = x_t / ab.sqrt().float()
        expected = (x - model.denoise(x, sigma.flatten(), y)) / sigma
        assert torch.allclose(eps, expected, rtol=1e-4, atol=1e-4)
        # Integer timesteps given as floats give the same prediction.
        assert torch.allclose(model(x_t, t.float(), y), eps, atol=1e-5)


def test_options_validate_the_inner_backbone():
    with pytest.raises(CbdmError, match="inner_options"):
        validate_component_options(EDMOptions, {"inner_options": {"ch": -1}}, "model.options (edm)")
    with pytest.raises(CbdmError, match="unknown key"):
        validate_component_options(EDMOptions, {"inner_options": {"chanels": 8}}, "model.options (edm)")
    with pytest.raises(CbdmError, match="unknown backbone"):
        EDMOptions(inner="nope")
    with pytest.raises(CbdmError, match="sigma_min"):
        validate_component_options(EDMOptions, {"sigma_min": 5, "sigma_max": 1}, "model.options (edm)")
    # cond_dim reaches an inner backbone that takes one.
    m = build_edm(EDMOptions(inner_options=INNER, cond_dim=5), image_size=8, channels=1, num_classes=3)
    assert m.inner.cond_embedding.in_features == 5


# -- sigma <-> t -----------------------------------------------------------------------------
def test_sigma_t_mapping_is_monotone_and_matches_the_schedule():
    sched = LinearSchedule(T=100, beta_T=0.2)
    ab = sched.alphas_cumprod
    table = ((1 - ab) / ab).sqrt()
    assert torch.allclose(schedule_sigmas(sched), table)
    ts = torch.arange(100)
    assert torch.allclose(t_to_sigma(ts, sched), table)
    assert torch.equal(sigma_to_timestep(table, sched), ts)
    tf = torch.linspace(0, 99, 997, dtype=torch.float64)
    s = t_to_sigma(tf, sched)
    assert bool((s[1:] > s[:-1]).all())
    assert torch.allclose(sigma_to_t(s, sched), tf, atol=1e-9)
    # Nearest in log-sigma, clamped to 0..T-1 outside the schedule's range.
    mid = (table[10] * table[11]).sqrt()
    assert sigma_to_timestep(mid * 0.999, sched) == 10 and sigma_to_timestep(mid * 1.001, sched) == 11
    assert sigma_to_timestep(torch.tensor([1e-5, 1e5]), sched).tolist() == [0, 99]


# -- loss ------------------------------------------------------------------------------------
def test_edm_loss_equals_weighted_denoising_error():
    sched = LinearSchedule()
    model = tiny_edm(sched)
    _perturb(model)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([3, 100, 500, 999])
    y = torch.tensor([0, 1, 2, 0])
    loss = EDMLoss(sched)
    batch = loss.draw(x0, t=t, noise=noise)
    sigma = schedule_sigmas(sched)[t].float()
    assert torch.equal(batch.t, t) and torch.allclose(batch.time, sigma)
    assert torch.allclose(batch.x, x0 + sigma.view(-1, 1, 1, 1) * noise)
    assert torch.allclose(batch.weight, (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2)
    objective = DiffusionObjective(sched, 3, [], p_uncond=0.0, base=loss)
    out = objective(model, x0, y, t=t, noise=noise)
    with torch.no_grad():
        d = model.denoise(batch.x, sigma, y)
    expected = (batch.weight.view(-1, 1, 1, 1) * (d - x0) ** 2).mean()
    assert torch.allclose(out["diffusion"], expected, rtol=1e-5)


def test_edm_loss_draws_log_normal_sigma_with_nearest_timestep():
    sched = LinearSchedule()
    torch.manual_seed(0)
    batch = build_edm_loss(sched, backbone_options={"P_mean": -1.0, "P_std": 0.5}).draw(torch.zeros(4000, 1, 1, 1))
    ls = batch.time.log()
    assert abs(float(ls.mean()) + 1.0) < 0.05 and abs(float(ls.std()) - 0.5) < 0.05
    assert torch.equal(batch.t, sigma_to_timestep(batch.time, sched))
    assert int(batch.t.min()) >= 0 and int(batch.t.max()) <= 999
    assert build_edm_loss(sched, backbone_options=EDMOptions(sigma_data=0.7)).sigma_data == 0.7


def test_edm_loss_rejects_models_without_denoise_and_mismatched_settings():
    from .helpers import tiny_unet

    x0 = torch.zeros(2, 1, 8, 8)
    loss = EDMLoss(LinearSchedule())
    b = loss.draw(x0)
    with pytest.raises(CbdmError, match="denoise"):
        loss.predict(tiny_unet(), b.x, b.time, torch.zeros(2, dtype=torch.long), None)
    with pytest.raises(CbdmError, match="sigma_data"):
        EDMLoss(LinearSchedule(), sigma_data=0.3).predict(tiny_edm(), b.x, b.time, torch.zeros(2, dtype=torch.long), None)
    with pytest.raises(CbdmError, match="P_mean"):
        EDMLoss(LinearSchedule(), P_mean=0.0).predict(tiny_edm(), b.x, b.time, torch.zeros(2, dtype=torch.long), None)


def test_cbdm_on_edm_weights_by_equivalent_timestep_and_stops_gradients():
    sched = LinearSchedule()
    model = tiny_edm(sched)
    _perturb(model)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(6, 1, 8, 8, generator=g)
    t = torch.tensor([10, 200, 400, 600, 800, 999])
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    yp = torch.full((6,), 2)
    reg = CBDMRegularizer(probs=torch.full((3,), 1 / 3), tau=0.001, gamma=0.25, y_prime=yp)
    objective = DiffusionObjective(sched, 3, [reg], p_uncond=0.0, base=EDMLoss(sched))
    out = objective(model, x0, y, t=t, noise=noise)
    batch = EDMLoss(sched).draw(x0, t=t, noise=noise)
    with torch.no_grad():
        d_y, d_p = model.denoise(batch.x, batch.time, y), model.denoise(batch.x, batch.time, yp)
    w = (0.001 * t.float()).view(-1, 1, 1, 1)
    assert torch.allclose(out["regularizer"], (w * (d_y - d_p) ** 2).mean(), rtol=1e-4)
    assert float(w.max()) <= 1.0

    emb = model.inner.label_embedding

    def grads(term: str) -> torch.Tensor:
        model.zero_grad()
        objective(model, x0, y, t=t, noise=noise)[term].backward()
        return emb.weight.grad.clone()

    g_reg, g_com = grads("regularizer"), grads("commitment")
    for c in (0, 1):  # only in y: the regulariser's gradient flows through D(x, y) alone
        assert g_reg[c].abs().sum() > 0 and g_com[c].abs().sum() == 0
    assert g_com[2].abs().sum() > 0 and g_reg[2].abs().sum() == 0  # only in y'
    assert g_reg[3].abs().sum() == 0  # the null row never learns


# -- Heun sampler ----------------------------------------------------------------------------
class GaussianEps(nn.Module):
    """The exact eps model of x0 ~ N(mu, s^2 I) on a VP schedule, accepting float t."""

    def __init__(self, schedule, mu: float, s: float):
        super().__init__()
        self.schedule, self.mu, self.s, self.num_classes = schedule, mu, s, 2
        self.calls = 0

    def forward(self, x_t, t, y):
        self.calls += 1
        sigma = t_to_sigma(t, self.schedule).to(x_t.dtype).view(-1, 1, 1, 1)
        x = x_t * (1 + sigma ** 2).sqrt()
        d = (self.s ** 2 * x + sigma ** 2 * self.mu) / (self.s ** 2 + sigma ** 2)
        return (x - d) / sigma


def test_karras_sigmas():
    s = karras_sigmas(18, 0.002, 80.0)
    assert len(s) == 19 and s[-1] == 0.0
    assert math.isclose(s[0], 80.0) and math.isclose(s[-2], 0.002, rel_tol=1e-9)
    assert all(a > b for a, b in zip(s, s[1:]))
    assert karras_sigmas(1, 0.002, 80.0) == [80.0, 0.0]


def _heun_gain(s: float, sigmas: list[float]) -> float:
    """Scalar Heun recursion of dx/dsigma = (x - mu) sigma / (s^2 + sigma^2), started at x - mu = 1."""
    x = 1.0
    for a, b in zip(sigmas, sigmas[1:]):
        d = x * a / (s * s + a * a)
        xn = x + (b - a) * d
        if b > 0:
            xn = x + (b - a) * 0.5 * (d + xn * b / (s * s + b * b))
        x = xn
    return x


def test_heun_recovers_an_analytic_gaussian():
    sched = LinearSchedule()
    mu, s = 0.3, 0.2
    model = GaussianEps(sched, mu=mu, s=s)
    x_T = torch.randn(4000, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.zeros(4000, dtype=torch.long)
    x0 = sample(model, sched, x_T, y, sampler="heun", steps=18)
    assert model.calls == 2 * 18 - 1
    # Exactly the Heun map (sigma_min clamped to the schedule's smallest sigma, about 0.01).
    gain = _heun_gain(s, karras_sigmas(18, float(schedule_sigmas(sched)[0]), 80.0))
    assert torch.allclose(x0, mu + (80.0 * x_T - mu) * gain, atol=1e-5)
    # Heun's 18-step bias on this Gaussian is ~6% of s; more steps converge to N(mu, s^2).
    assert abs(float(x0.mean()) - mu) < 0.01 and abs(float(x0.std()) - s) < 0.1 * s
    x0 = sample(model, sched, x_T, y, sampler="heun", steps=60)
    assert abs(float(x0.mean()) - mu) < 0.01 and abs(float(x0.std()) - s) < 0.01
    # With churn the chain is stochastic but converges to the same target.
    x1 = sample(model, sched, x_T.float(), y, sampler="heun", steps=60, S_churn=30.0,
                generator=torch.Generator().manual_seed(1))
    assert abs(float(x1.mean()) - mu) < 0.01 and abs(float(x1.std()) - s) < 0.01


def test_heun_with_edm_model_per_sample_generators_and_callback():
    sched = LinearSchedule(T=100, beta_T=0.2)
    model = EDMPrecond(ZeroInner(), sched).eval()
    x_T = torch.randn(3, 1, 4, 4)
    y = torch.tensor([0, 1, 3])
    steps_seen = []
    out = sample(model, sched, x_T, y, sampler="heun", steps=4, guidance=1.0, S_churn=5.0,
                 generator=sample_generators(0, range(3)), callback=lambda i, n, x: steps_seen.append((i, n)))
    assert out.shape == x_T.shape and bool(torch.isfinite(out).all())
    assert steps_seen == [(i, 4) for i in range(4)]
    # Per-sample generators: a sample does not depend on its batch.
    alone = sample(model, sched, x_T[1:2], y[1:2], sampler="heun", steps=4, guidance=1.0, S_churn=5.0,
                   generator=sample_generators(0, [1]))
    assert torch.allclose(alone, out[1:2], atol=1e-6)
    # sigma_max is clamped to the schedule's largest sigma; one step is one Euler step to 0.
    calls = []

    def eps_fn(x, t, y_):
        calls.append(float(t[0]))
        return torch.zeros_like(x)

    short = LinearSchedule(T=100)  # largest sigma about 1.3
    heun_sample(eps_fn, short, x_T, y, steps=1)
    assert calls == [99.0]
    calls.clear()
    heun_sample(eps_fn, sched, x_T, y, steps=1)  # here sigma 80 lies inside the schedule
    assert calls[0] == pytest.approx(float(sigma_to_t(torch.tensor([80.0]), sched)), abs=1e-4) and calls[0] < 99


def test_heun_rejects_bad_settings():
    sched = LinearSchedule(T=10)
    eps_fn = lambda x, t, y: torch.zeros_like(x)  # noqa: E731
    x, y = torch.zeros(1, 1, 1, 1), torch.zeros(1, dtype=torch.long)
    with pytest.raises(CbdmError, match="eta"):
        heun_sample(eps_fn, sched, x, y, steps=2, eta=0.5)
    with pytest.raises(CbdmError, match="unknown option"):
        heun_sample(eps_fn, sched, x, y, steps=2, spacing="uniform")
    with pytest.raises(CbdmError, match="steps"):
        heun_sample(eps_fn, sched, x, y, steps=0)
    with pytest.raises(CbdmError, match="sigma_min"):
        heun_sample(eps_fn, sched, x, y, steps=2, sigma_min=2.0, sigma_max=1.0)


# -- CLI ------------------------------------------------------------------------------------
BASE = {
    "diffusion": {"T": 100},
    "data": {"dataset": "digits-lt"},
    "optim": {"batch_size": 8, "steps": 2, "warmup": 1, "ema_decay": 0.9},
    "preview": {"sampler": "ddim", "steps": 2, "per_class": 1},
    "log_every": 1,
}


def _train(tmp_path: Path, model: dict) -> Path:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**BASE, "model": model}))
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", "--config", str(cfg), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


def _sample(run: Path, *args: str) -> Path:
    out = run / "s"
    res = CliRunner().invoke(cli, ["sample", str(run), "--num", "6", "--out", str(out), "--no-progress",
                                   "--device", "cpu", *args])
    assert res.exit_code == 0, res.output
    assert list(out.glob("shard-*.npz"))
    return out


def test_cli_trains_and_samples_edm(tmp_path):
    run = _train(tmp_path, {"backbone": "edm", "options": {"inner_options": INNER}})
    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"diffusion", "regularizer"} <= set(rec)
    _sample(run, "--steps", "4")


def test_cli_heun_samples_a_unet_run(tmp_path):
    run = _train(tmp_path, {"backbone": "unet", "options": INNER})
    _sample(run, "--sampler", "heun", "--steps", "4")
