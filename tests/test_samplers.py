"""Samplers against an exact denoiser for Gaussian data, plus timesteps, noise and errors."""

from __future__ import annotations

import pytest
import torch

from cbdm_core.errors import CbdmError
from cbdm_core.registry import build_registry
from cbdm_core.sampling import (
    ddim_sample,
    ddpm_sample,
    randn_like_per_sample,
    sample,
    sample_generators,
    timestep_sequence,
)
from cbdm_core.sampling.ddpm import ddpm_coefficients
from cbdm_core.schedules import LinearSchedule

# The real DDPM schedule: the analytic denoiser is cheap, so T=1000 costs little.
SCHEDULE = LinearSchedule(T=1000)
MUS = torch.tensor([[0.5, -0.3, 0.2], [-0.4, 0.1, 0.45]], dtype=torch.float64)


class GaussianDenoiser:
    """Exact eps for x_0 ~ N(mu_y, s^2 I): x_t ~ N(sqrt(ab) mu_y, (ab s^2 + 1 - ab) I) and
    eps(x_t) = sqrt(1 - ab) (x_t - sqrt(ab) mu_y) / (ab s^2 + 1 - ab)."""

    def __init__(self, mus: torch.Tensor, s: float, schedule=SCHEDULE):
        self.mus, self.s, self.ab = mus, s, schedule.alphas_cumprod
        self.num_classes = mus.shape[0]
        self.calls = 0

    def __call__(self, x, t, y):
        self.calls += 1
        shape = (-1,) + (1,) * (x.ndim - 1)
        ab = self.ab.to(x)[t].view(shape)
        mu = self.mus.to(x)[y].view(x.shape)
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * self.s ** 2 + 1 - ab)


def _start(n: int, dim: int = 3, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=dtype), torch.arange(n) % 2


def _check_lands_on_data(out, y, s, std_tol):
    n = int((y == 0).sum())
    for c in range(2):
        o = out[y == c]
        # 4 standard errors of the mean with a fixed seed: deterministic, not flaky.
        assert (o.mean(0) - MUS[c]).abs().max() < 4 * s / n ** 0.5 + 0.005
        ratio = o.std(0) / s
        assert ((ratio - 1).abs() < std_tol).all(), ratio


# --- timesteps -------------------------------------------------------------

def test_timestep_sequence_exact_cases():
    assert timestep_sequence(1000, 10, "uniform") == list(range(0, 1000, 100))
    assert timestep_sequence(10, 3, "uniform") == [0, 3, 6]  # T // S stride, largest (S-1)*(T//S)
    assert timestep_sequence(1000, 10, "linspace") == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert timestep_sequence(10, 4, "linspace") == [0, 3, 6, 9]
    assert timestep_sequence(1000, 10, "trailing") == list(range(99, 1000, 100))
    # arange(10, 0, -2.5) = 10, 7.5, 5, 2.5 -> half-to-even 10, 8, 5, 2 -> minus 1
    assert timestep_sequence(10, 4, "trailing") == [1, 4, 7, 9]
    for spacing in ("uniform", "linspace", "trailing"):
        assert timestep_sequence(50, 50, spacing) == list(range(50))
        assert timestep_sequence(50, 1, spacing) in ([0], [49])


@pytest.mark.parametrize("spacing", ["uniform", "linspace", "trailing"])
def test_timestep_sequence_rejects_bad_steps(spacing):
    with pytest.raises(CbdmError, match="steps must be <= T"):
        timestep_sequence(100, 101, spacing)
    with pytest.raises(CbdmError):
        timestep_sequence(100, 0, spacing)


def test_timestep_sequence_unknown_spacing():
    with pytest.raises(CbdmError, match="uniform, linspace, trailing"):
        timestep_sequence(100, 10, "quadratic")


# --- distributions ---------------------------------------------------------

def test_ddim_eta0_is_deterministic_and_lands_on_data():
    s = 0.25
    x, y = _start(4000)
    model = GaussianDenoiser(MUS, s)
    a = sample(model, SCHEDULE, x, y, sampler="ddim", steps=250)
    b = sample(model, SCHEDULE, x, y, sampler="ddim", steps=250, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert model.calls == 500
    _check_lands_on_data(a, y, s, std_tol=0.06)


@pytest.mark.parametrize("var_type", ["fixedlarge", "fixedsmall"])
def test_ddpm_lands_on_data_and_agrees_with_ddim(var_type):
    s = 0.25
    x, y = _start(4000)
    model = GaussianDenoiser(MUS, s)
    out = sample(model, SCHEDULE, x, y, sampler="ddpm", var_type=var_type, clip_denoised=False,
                 generator=torch.Generator().manual_seed(1))
    assert model.calls == SCHEDULE.num_timesteps
    _check_lands_on_data(out, y, s, std_tol=0.05)
    ref = sample(model, SCHEDULE, x, y, sampler="ddim", steps=250)
    for c in range(2):
        assert (out[y == c].mean(0) - ref[y == c].mean(0)).abs().max() < 0.03
        assert ((out[y == c].std(0) / ref[y == c].std(0) - 1).abs() < 0.08).all()


def test_ddpm_default_clipping_still_lands_on_data():
    s = 0.15  # keeps the data inside [-1, 1], where clipping changes little
    x, y = _start(4000)
    out = sample(GaussianDenoiser(MUS, s), SCHEDULE, x, y, sampler="ddpm",
                 generator=torch.Generator().manual_seed(2))
    _check_lands_on_data(out, y, s, std_tol=0.05)


def test_ddim_eta1_lands_on_data():
    s = 0.5
    x, y = _start(4000)
    out = sample(GaussianDenoiser(MUS, s), SCHEDULE, x, y, sampler="ddim", steps=250, eta=1.0,
                 generator=torch.Generator().manual_seed(3))
    # Stochastic DDIM with stride 4 underestimates the variance a little
    # (it ignores the spread of x_0 given x_t): a known discretisation bias.
    _check_lands_on_data(out, y, s, std_tol=0.10)


def test_ddim_eta1_all_steps_equals_ddpm_fixedsmall():
    # With every timestep, eta=1 DDIM is exactly DDPM with the posterior variance.
    x, y = _start(64)
    model = GaussianDenoiser(MUS, 0.3)
    a = ddim_sample(model, SCHEDULE, x, y, steps=1000, eta=1.0, generator=torch.Generator().manual_seed(9))
    b = ddpm_sample(model, SCHEDULE, x, y, var_type="fixedsmall", clip_denoised=False,
                    generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_ddpm_variance_tables_match_reference():
    sch = SCHEDULE
    large = ddpm_coefficients(sch, "fixedlarge")["log_var"].exp()
    assert torch.allclose(large[0], sch.posterior_variance[1])
    assert torch.allclose(large[1:], sch.betas[1:])
    small = ddpm_coefficients(sch, "fixedsmall")["log_var"].exp()
    assert torch.allclose(small[0], sch.posterior_variance[1])
    assert torch.allclose(small[1:], sch.posterior_variance[1:])
    with pytest.raises(CbdmError, match="fixedlarge, fixedsmall"):
        ddpm_coefficients(sch, "learned")


class ZeroEps:
    """Predicts eps = 0, so x_0 is predicted as x_t / sqrt(ab): far outside [-1, 1]."""

    num_classes = 2

    def __call__(self, x, t, y):
        return torch.zeros_like(x)


def test_clip_denoised_defaults():
    sch = LinearSchedule(T=50, beta_T=0.2)
    x = torch.full((2, 3), 3.0)
    y = torch.tensor([0, 1])
    assert sample(ZeroEps(), sch, x, y, sampler="ddpm", generator=torch.Generator().manual_seed(0)).abs().max() <= 1
    assert sample(ZeroEps(), sch, x, y, sampler="ddim", steps=10).abs().max() > 1
    assert sample(ZeroEps(), sch, x, y, sampler="ddim", steps=10, clip_denoised=True).abs().max() <= 1


def test_dtype_device_and_no_grad():
    class WithParam(GaussianDenoiser):
        def __init__(self):
            super().__init__(MUS, 0.3)
            self.w = torch.nn.Parameter(torch.ones(()))

        def __call__(self, x, t, y):
            return super().__call__(x, t, y) * self.w

    x, y = _start(8, dtype=torch.float32)
    out = sample(WithParam(), SCHEDULE, x, y, steps=5)
    assert out.dtype == torch.float32 and not out.requires_grad
    out.clamp_(-1, 1)  # no inference tensor: in-place edits stay allowed


def test_callback_sees_every_step():
    seen = []
    x, y = _start(4)
    sample(GaussianDenoiser(MUS, 0.3), SCHEDULE, x, y, steps=7,
           callback=lambda i, n, xt: seen.append((i, n, tuple(xt.shape))))
    assert seen == [(i, 7, (4, 3)) for i in range(7)]


# --- per-sample noise ------------------------------------------------------

def test_sample_generators_and_per_sample_noise():
    a = randn_like_per_sample((2, 3), sample_generators(7, range(4)))
    b = randn_like_per_sample((2, 3), sample_generators(7, [2, 3]))
    assert a.shape == (4, 2, 3) and a.dtype == torch.float32
    assert torch.equal(a[2:], b)
    assert not torch.equal(a[0], a[1])
    other_seed = randn_like_per_sample((2, 3), sample_generators(8, range(4)))
    assert not torch.equal(a, other_seed)
    half = randn_like_per_sample((2, 3), sample_generators(7, range(4)), dtype=torch.float16)
    assert half.dtype == torch.float16 and torch.equal(half, a.half())
    with pytest.raises(CbdmError):
        sample_generators(7, [-1])


@pytest.mark.parametrize("kw", [dict(sampler="ddpm"), dict(sampler="ddim", steps=20, eta=1.0)])
def test_same_seed_same_images_whatever_the_batch(kw):
    sch = LinearSchedule(T=100, beta_T=0.2)
    model = GaussianDenoiser(MUS[:, :2].repeat(1, 2), 0.3, schedule=sch)
    shape = (1, 2, 2)
    y = torch.tensor([0, 1, 1, 0, 1, 0])

    def run(lo, hi):
        gens = sample_generators(1234, range(lo, hi))
        x_T = randn_like_per_sample(shape, gens)
        return sample(model, sch, x_T, y[lo:hi], generator=gens, **kw)

    whole = run(0, 6)
    split = torch.cat([run(0, 2), run(2, 6)])
    assert torch.equal(whole, split)


def test_generator_list_must_match_batch():
    x, y = _start(3)
    with pytest.raises(CbdmError, match="2 per-sample generators for a batch of 3"):
        sample(GaussianDenoiser(MUS, 0.3), SCHEDULE, x, y, eta=1.0, steps=5,
               generator=sample_generators(0, range(2)))


# --- user errors and registry ----------------------------------------------

def test_unknown_sampler_lists_choices():
    x, y = _start(2)
    with pytest.raises(CbdmError, match="unknown sampler 'euler'.*ddim, ddpm"):
        sample(GaussianDenoiser(MUS, 0.3), SCHEDULE, x, y, sampler="euler")


def test_labels_out_of_range():
    x, _ = _start(2)
    model = GaussianDenoiser(MUS, 0.3)  # 2 classes: labels 0, 1 and null 2
    for bad in ([0, 3], [-1, 0]):
        with pytest.raises(CbdmError, match="out of range"):
            sample(model, SCHEDULE, x, torch.tensor(bad), steps=2)
    with pytest.raises(CbdmError, match="shape"):
        sample(model, SCHEDULE, x, torch.tensor([0, 1, 1]), steps=2)


def test_option_errors():
    x, y = _start(2)
    model = GaussianDenoiser(MUS, 0.3)
    with pytest.raises(CbdmError, match="all T=1000 steps"):
        sample(model, SCHEDULE, x, y, sampler="ddpm", steps=100)
    with pytest.raises(CbdmError, match="unknown option"):
        sample(model, SCHEDULE, x, y, sampler="ddim", steps=2, var_type="fixedlarge")
    with pytest.raises(CbdmError, match="eta"):
        sample(model, SCHEDULE, x, y, sampler="ddim", steps=2, eta=-0.5)
    with pytest.raises(CbdmError, match="eta"):
        sample(model, SCHEDULE, x, y, sampler="ddpm", eta=1.0)
    with pytest.raises(CbdmError, match="steps must be <= T"):
        sample(model, LinearSchedule(T=50), x, y, sampler="ddim")  # default 100 steps > T


def test_registry_has_samplers_and_guidance():
    reg = build_registry()
    assert {"ddpm", "ddim"} <= set(reg.names("sampler"))
    assert {"cfg", "none"} <= set(reg.names("guidance"))
    assert reg.get("sampler", "ddim").obj.default_steps == 100
    assert reg.get("sampler", "ddpm").obj.default_steps is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_with_per_sample_generators():
    sch = LinearSchedule(T=100, beta_T=0.2)
    model = GaussianDenoiser(MUS, 0.3, schedule=sch)
    y = torch.tensor([0, 1, 1, 0])
    outs = []
    for device in ("cpu", "cuda"):
        gens = sample_generators(5, range(4))
        x_T = randn_like_per_sample((3,), gens, device=device, dtype=torch.float64)
        outs.append(sample(model, sch, x_T, y.to(device), sampler="ddpm", generator=gens).cpu())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-9, atol=1e-9)
