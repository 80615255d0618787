"""OC / T2H (method ``t2h``): the transferred target against the formula, the gate, the draw."""

import pytest
import torch

from cbdm_core import LinearSchedule, t2h_targets
from cbdm_core.errors import CbdmError
from cbdm_core.methods.base import MethodBuildContext
from cbdm_core.methods.t2h import T2HOptions, build_t2h, transfer_weights
from cbdm_core.objectives import DiffusionObjective
from tests.helpers import LinearDenoiser

SCHED = LinearSchedule(T=100)


def _batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, 1, 2, 2, generator=g) * 2 - 1
    noise = torch.randn(b, 1, 2, 2, generator=g)
    return x0, noise


def _formula(x0, t, noise, j):
    """eps*_i = (x_t,i - sqrt(ab_i) x0_j) / sqrt(1 - ab_i), in float64."""
    ab = SCHED.alphas_cumprod[t].double().view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0.double() + (1 - ab).sqrt() * noise.double()
    return (x_t - ab.sqrt() * x0.double()[j]) / (1 - ab).sqrt()


def _weights_by_hand(x0, t, noise):
    """w_ij from the definition with c_i = x_t,i / sqrt(ab_i), in float64."""
    b = x0.shape[0]
    ab = SCHED.alphas_cumprod[t].double()
    s2 = 1 / ab - 1
    x0f = x0.double().reshape(b, -1)
    c = x0f + s2.sqrt()[:, None] * noise.double().reshape(b, -1)
    logw = torch.stack([-((c[i] - x0f) ** 2).sum(-1) / (2 * s2[i]) for i in range(b)])
    return torch.softmax(logw, dim=1)


def _forced(monkeypatch, j_drawn):
    """Make the Categorical draw return ``j_drawn`` so the gate can be checked row by row."""
    monkeypatch.setattr(torch, "multinomial", lambda w, n, generator=None: j_drawn.view(-1, 1).clone())


@pytest.mark.parametrize("mode", ["t2h", "h2t", "full"])
def test_target_equals_formula_under_each_gate(monkeypatch, mode):
    x0, noise = _batch(6)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    freq = torch.tensor([100.0, 10.0, 1.0])  # class 0 head, 2 tail
    t = torch.full((6,), 90)
    drawn = torch.tensor([2, 0, 0, 1, 5, 4])  # row i draws source drawn[i]
    _forced(monkeypatch, drawn)
    target, j = t2h_targets(x0, y, t, noise, SCHED, freq, mode=mode)
    p_i, p_j = freq[y], freq[y[drawn]]
    allowed = {"t2h": p_j >= p_i, "h2t": p_j <= p_i, "full": torch.ones(6, dtype=torch.bool)}[mode]
    want_j = torch.where(allowed, drawn, torch.arange(6))
    assert torch.equal(j, want_j)
    assert 0 < int((j != torch.arange(6)).sum()) < 6 or mode == "full"
    assert torch.allclose(target.double(), _formula(x0, t, noise, want_j), atol=1e-5)


def test_cut_time_only_transfers_early_steps(monkeypatch):
    x0, noise = _batch(4)
    y = torch.tensor([2, 2, 2, 2])
    t = torch.tensor([10, 49, 50, 90])
    _forced(monkeypatch, torch.tensor([1, 0, 3, 2]))
    target, j = t2h_targets(x0, y, t, noise, SCHED, torch.ones(3), mode="full", cut_time=50)
    assert j.tolist() == [1, 0, 2, 3]
    assert torch.allclose(target.double(), _formula(x0, t, noise, j), atol=1e-5)


def test_own_target_is_the_noise():
    x0, noise = _batch(5)
    j = torch.arange(5)
    t = torch.randint(0, 100, (5,))
    assert torch.allclose(_formula(x0, t, noise, j), noise.double(), atol=1e-5)


def test_small_sigma_keeps_own_target():
    # t = 0: sigma^2 = 1/ab - 1 = 1e-4; any other image is hopelessly far away.
    x0, noise = _batch(8)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        target, j = t2h_targets(x0, y, torch.zeros(8, dtype=torch.long), noise, SCHED, torch.ones(4),
                                mode="full", generator=g)
        assert torch.equal(j, torch.arange(8))
        assert torch.allclose(target, noise, atol=1e-5)


def test_weights_match_the_definition():
    x0, noise = _batch(6)
    t = torch.tensor([99, 80, 60, 95, 30, 70])
    w = transfer_weights(x0, t, noise, SCHED)
    assert torch.allclose(w, _weights_by_hand(x0, t, noise), atol=1e-10)


def test_draw_frequencies_match_the_weights():
    x0, noise = _batch(4, seed=3)
    x0 = x0 * 0.1  # close images at a high noise level: weights spread over the batch
    t = torch.full((4,), 99)
    y = torch.zeros(4, dtype=torch.long)
    w = _weights_by_hand(x0, t, noise)
    assert float(w.min()) > 0.05  # the test is only meaningful when every source is likely
    n = 4000
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(4, 4, dtype=torch.float64)
    for _ in range(n):
        _, j = t2h_targets(x0, y, t, noise, SCHED, torch.ones(1), mode="full", generator=g)
        counts[torch.arange(4), j] += 1
    freq = counts / n
    sd = (w * (1 - w) / n).sqrt()
    assert bool(((freq - w).abs() <= 5 * sd).all()), (freq, w)


def test_gate_uses_true_labels_on_dropped_rows(monkeypatch):
    # Row 0 is a tail image whose label was dropped; the transfer still applies to it.
    x0, noise = _batch(3)
    y = torch.tensor([2, 0, 0])
    keep = torch.tensor([False, True, True])
    method = build_t2h(T2HOptions(mode="t2h"), MethodBuildContext(class_counts=torch.tensor([50, 5, 1]),
                                                                  num_classes=3, schedule=SCHED))
    objective = DiffusionObjective(SCHED, 3, [method], p_uncond=0.0)
    _forced(monkeypatch, torch.tensor([1, 0, 0]))  # 0 <- 1 (head) allowed; 1 <- 0 (tail) refused
    t = torch.full((3,), 90)
    ctx, _ = objective.prepare(x0, y, t=t, noise=noise, keep=keep)
    assert ctx.y_in[0] == 3  # the network saw the null label on row 0
    assert torch.allclose(ctx.target.double(), _formula(x0, t, noise, torch.tensor([1, 1, 2])), atol=1e-5)


def test_no_gradient_flows_into_the_target():
    x0, noise = _batch(4)
    x0.requires_grad_(True)
    noise.requires_grad_(True)
    model = LinearDenoiser(num_classes=3)
    with torch.no_grad():
        model.a.zero_()  # the prediction no longer depends on x_t: any gradient into x0 or noise is the target's
    method = build_t2h(T2HOptions(mode="full"), MethodBuildContext(class_counts=torch.ones(3), num_classes=3,
                                                                   schedule=SCHED))
    objective = DiffusionObjective(SCHED, 3, [method], p_uncond=0.0)
    out = objective(model, x0, torch.tensor([0, 1, 2, 0]), t=torch.full((4,), 99), noise=noise)
    out.total.backward()
    for leaf in (x0, noise):
        assert leaf.grad is None or float(leaf.grad.abs().sum()) == 0.0
    assert model.b.grad is not None and float(model.b.grad.abs().sum()) > 0  # the network does learn


def test_loss_is_mse_against_the_transferred_target(monkeypatch):
    x0, noise = _batch(4)
    model = LinearDenoiser(num_classes=3)
    method = build_t2h(T2HOptions(mode="full"), MethodBuildContext(class_counts=torch.ones(3), num_classes=3,
                                                                   schedule=SCHED))
    _forced(monkeypatch, torch.tensor([3, 2, 1, 0]))
    t = torch.full((4,), 99)
    y = torch.tensor([0, 1, 2, 0])
    terms = DiffusionObjective(SCHED, 3, [method], p_uncond=0.0)(model, x0, y, t=t, noise=noise)
    x_t = SCHED.q_sample(x0, t, noise)
    with torch.no_grad():
        want = (model(x_t, t, y) - _formula(x0, t, noise, torch.tensor([3, 2, 1, 0])).float()).pow(2).mean()
    assert torch.allclose(terms["diffusion"], want, rtol=1e-5)
    assert terms["t2h_moved"] == 1.0
    assert model.calls[0] == 4  # no extra rows: one pass over the batch


def test_t2h_needs_the_epsilon_loss():
    from cbdm_core.edm import EDMLoss

    x0, noise = _batch(2)
    method = build_t2h(T2HOptions(), MethodBuildContext(class_counts=torch.ones(3), num_classes=3, schedule=SCHED))
    objective = DiffusionObjective(SCHED, 3, [method], p_uncond=0.0, base=EDMLoss(SCHED))
    with pytest.raises(CbdmError, match="ddpm loss"):
        objective.prepare(x0, torch.tensor([0, 1]))


def test_two_target_methods_are_a_config_error():
    from cbdm_core.errors import ConfigError

    ctx = MethodBuildContext(class_counts=torch.ones(3), num_classes=3, schedule=SCHED)
    a, b = build_t2h(T2HOptions(), ctx), build_t2h(T2HOptions(mode="full"), ctx)
    objective = DiffusionObjective(SCHED, 3, [a, b], p_uncond=0.0)
    with pytest.raises(ConfigError, match="at most one"):
        objective.prepare(*(_batch(2)[:1]), torch.tensor([0, 1]))


def test_unknown_mode_is_one_line_error():
    with pytest.raises(CbdmError, match="mode"):
        t2h_targets(*_batch(2)[:1], torch.tensor([0, 1]), torch.tensor([5, 5]), _batch(2)[1], SCHED,
                    torch.ones(2), mode="sideways")
