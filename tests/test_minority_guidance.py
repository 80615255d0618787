"""Minority guidance (``minority``, ``cfg+minority``, ``train-classifier --noisy RUN --minority``)
and self-guided minority generation (``self-minority``), checked against the authors' released
update rules re-derived by hand (soobin-um/minority-guidance @ e7e69bd and soobin-um/sg-minority
@ f239b66; the file and lines are cited in each test)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from cbdm_core.errors import CbdmError
from cbdm_core.minority.distance import make_distance, pixel_distance
from cbdm_core.minority.guide import minority_term
from cbdm_core.minority.score import minority_scores, perturb_timestep, quantise
from cbdm_core.minority.self_guide import SelfMinorityOptions, self_minority_term
from cbdm_core.sampling.shards import load_samples
from cbdm_core.schedules import LinearSchedule
from cbdm_core.tensor_io import load_tensors
from tests.helpers import TINY, LinearClassifier, LinearDenoiser, cli_fails, cli_ok


def _their_space_timesteps(T, count):
    """guided_diffusion/respace.py lines 38-59 (one section), re-derived."""
    frac_stride = 1 if count <= 1 else (T - 1) / (count - 1)
    cur, taken = 0.0, []
    for _ in range(count):
        taken.append(round(cur))
        cur += frac_stride
    return sorted(set(taken))


@pytest.mark.parametrize("T", [1000, 100, 250])
def test_perturb_timestep_is_index_60_of_their_100_step_respacing(T):
    # construct_ms_dataset.py line 27 (timestep_respacing "100") and line 158 (perturb_t=60)
    assert perturb_timestep(T) == _their_space_timesteps(T, 100)[60]
    assert perturb_timestep(T, 10, 50) == _their_space_timesteps(T, 50)[10]
    with pytest.raises(CbdmError, match="perturb-t"):
        perturb_timestep(T, 100, 100)


def _their_labels(ms, L):
    """construct_ms_dataset.py lines 94-111: quantile thresholds, then the labelling loop."""
    q_th = torch.zeros(L)
    for i in range(L):
        q_th[i] = torch.quantile(ms, 1 / L * (i + 1))
    labels = torch.zeros_like(ms).long()
    for i in range(len(ms)):
        for j in range(L):
            if (j == 0 and ms[i] <= q_th[j]) or (j > 0 and q_th[j - 1] < ms[i] <= q_th[j]):
                labels[i] = j
    return labels, q_th


@pytest.mark.parametrize("L", [1, 3, 7])
def test_quantise_equals_construct_ms_dataset(L):
    g = torch.Generator().manual_seed(L)
    ms = torch.rand(40, generator=g)  # float32, as their LPIPS scores
    ms[5:9] = ms[4]  # ties
    got, thresholds = quantise(ms, L)
    want, q_th = _their_labels(ms, L)
    assert torch.equal(got, want)
    torch.testing.assert_close(thresholds, q_th)
    assert got.max() == L - 1 and got[ms.argmax()] == L - 1


def test_minority_scores_are_their_mean_tweedie_distance():
    """construct_ms_dataset.py lines 72-82: x_t = q_sample(x0, t), x0_hat = pred_xstart
    (clipped, p_mean_variance's default), score = mean over n_iter of d(x0, x0_hat)."""
    schedule, model = LinearSchedule(T=50), LinearDenoiser(num_classes=3).double()
    images = torch.randint(0, 256, (5, 1, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    labels, t, n_iter = torch.tensor([0, 1, 2, 0, 1]), 30, 3
    with torch.no_grad():
        got = minority_scores(model, schedule, images, labels, pixel_distance, t=t, n_iter=n_iter, batch_size=2,
                              seed=4)
    gen, x0 = torch.Generator().manual_seed(4), images.double() / 127.5 - 1
    ab, want = schedule.alphas_cumprod[t], []
    for sl in (slice(0, 2), slice(2, 4), slice(4, 5)):  # the same batches draw the same noise
        total = 0
        for _ in range(n_iter):
            xt = ab.sqrt() * x0[sl] + (1 - ab).sqrt() * torch.randn(x0[sl].shape, generator=gen).double()
            eps = model.a * xt + model.b[labels[sl]] + 1e-3 * t
            x_hat = ((xt - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
            total = total + (x0[sl] - x_hat).flatten(1).norm(dim=1)
        want.append(total / n_iter)
    # the images enter as float32 (images.to_float), hence a float32 tolerance
    torch.testing.assert_close(got, torch.cat(want).detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("class_cond", [True, False])
def test_minority_term_equals_their_cond_fn_with_condition_score(class_cond):
    """classifier_sample.py lines 71-81 (cond_fn: grad log_softmax(logits)[level] * scale) and
    guided_diffusion/gaussian_diffusion.py lines 381-386 (condition_score); the class-conditional
    classifier's p(level | x, c) is the softmax over class c's block of L logits."""
    K, L, scale, level = 3, 2, 2.5, 1
    schedule = LinearSchedule(T=50)
    clf = LinearClassifier(num_classes=K * L if class_cond else L).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 2, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 1, 2, 2, generator=g, dtype=torch.float64)
    t, y = torch.tensor([0, 7, 30, 49]), torch.tensor([0, 2, 1, 3])  # 3: the null label
    with torch.no_grad():
        got = minority_term(lambda *_: eps, clf, schedule, scale, level, L, class_cond, null_label=3)(x, t, y)
    for i in range(4):
        if class_cond and y[i] == 3:  # the null row has no class to guide within
            torch.testing.assert_close(got[i], eps[i])
            continue
        rows = slice(y[i] * L, (y[i] + 1) * L) if class_cond else slice(0, L)
        W = clf.W[rows]
        p = (x[i].flatten() @ W.T + clf.b[rows] + t[i] * clf.c[rows]).softmax(-1)
        grad = (W[level] - p @ W).view_as(x[i])
        want = eps[i] - (1 - schedule.alphas_cumprod[t[i]]).sqrt() * grad * scale
        torch.testing.assert_close(got[i], want, rtol=1e-10, atol=1e-12)


def test_self_minority_equals_compute_mg_grad():
    """soobin-um/sg-minority @ f239b66 guided_diffusion/gaussian_diffusion.py lines 454-456 (guided
    when t % inter_rate == 0) and 474-526 (compute_mg_grad: x0 = pred_xstart(x_t) unclipped, x0_hat =
    pred_xstart(q_sample(x0, t_p)) detached, ms = ||x0 - x0_hat||_2, grad, divided by max |grad|,
    times mg_scale), in the score form eps - sqrt(1 - abar_t) g. The model is eps = a x + b[y] + ct,
    so d x0 / d x_t = (1 - sqrt(1-abar) a) / sqrt(abar) and the gradient is written by hand."""
    schedule, model = LinearSchedule(T=50), LinearDenoiser(num_classes=3).double()
    opts = SelfMinorityOptions(scale=0.7, inter_rate=5, distance="pixel")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64)
    n = torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    denoise = self_minority_term(model, model, schedule, pixel_distance, lambda x_t, like: n, opts)
    for step in (20, 21):
        t = torch.full((3,), step)
        with torch.no_grad():
            got, eps = denoise(x, t, y), model(x, t, y)
        if step % opts.inter_rate:
            torch.testing.assert_close(got, eps)
            continue
        ab, tp = schedule.alphas_cumprod[step], int(50 * opts.p_ratio)
        abp = schedule.alphas_cumprod[tp]
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        xt = abp.sqrt() * x0 + (1 - abp).sqrt() * n
        x0_hat = (xt - (1 - abp).sqrt() * model(xt, torch.full((3,), tp), y)) / abp.sqrt()
        diff = x0 - x0_hat
        grad = (1 - (1 - ab).sqrt() * model.a) / ab.sqrt() * diff / diff.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        grad = grad / grad.abs().amax(dim=(1, 2, 3), keepdim=True)
        want = eps - (1 - ab).sqrt() * opts.scale * grad
        torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-12)
        assert (got - eps).abs().max() > 1e-3


def test_lpips_is_a_one_line_error_when_unavailable():
    try:
        import lpips  # noqa: F401
    except ImportError:
        with pytest.raises(CbdmError, match="not available: `pip install lpips` and put the vgg weights at"):
            make_distance("lpips")
    with pytest.raises(CbdmError, match="needs a feature classifier"):
        make_distance("classifier", dataset="no-such-dataset")
    assert make_distance("auto", dataset="no-such-dataset")[1]["distance"] == "pixel"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("minority")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    cli_ok("train", "--config", root / "tiny.yaml", "--out", root / "run", "--no-progress")
    res = cli_ok("train-classifier", "--noisy", root / "run", "--out", root / "m.safetensors", "--minority",
                 "--levels", 3, "--n-iter", 2, "--distance", "pixel", "--epochs", 1, "--bins", 2)
    return root, res.output


def test_train_classifier_minority_records_scores_levels_and_distance(tiny_run):
    from cbdm_core.guidance_classifier.net import load_noisy_classifier

    root, output = tiny_run
    clf, _ = load_noisy_classifier(root / "m.safetensors")
    info = clf.meta["minority"]
    assert info["distance"] == "pixel" and "LPIPS" in info["deviation"] and info["levels"] == 3
    assert info["class_cond"] and clf.options.num_classes == 10 * 3
    assert info["perturb_timestep"] == perturb_timestep(TINY["diffusion"]["T"])
    scores, _ = load_tensors(root / "m.scores.safetensors")
    levels = scores["labels"] % 3
    assert sum(info["level_counts"]) == len(scores["scores"]) == len(levels)
    assert torch.equal(levels, quantise(scores["scores"], 3)[0])
    assert "distance pixel" in output


def test_cbdm_sample_with_minority_and_self_minority(tiny_run):
    root, _ = tiny_run
    m = root / "m.safetensors"
    base = ("sample", root / "run", "--steps", 2, "-n", 10, "--no-progress", "--classes", "balanced")
    cli_ok(*base, "--out", root / "plain")
    plain, _ = load_samples(root / "plain")
    runs = {"minority": ("-G", f"classifier={m}", "-G", "scale=100", "-G", "level=0"),
            "self-minority": ("-G", "scale=2", "-G", "inter_rate=1", "-G", "distance=pixel")}
    want = {"minority": {"classifier": str(m), "scale": 100.0, "level": 0},
            "self-minority": {"scale": 2.0, "inter_rate": 1, "distance": "pixel"}}
    for method, opts in runs.items():
        cli_ok(*base, "--guidance-method", method, *opts, "--out", root / method)
        settings = json.loads((root / method / "manifest.json").read_text())["settings"]
        assert settings["guidance_method"] == method and settings["guidance_options"] == want[method]
        images, labels = load_samples(root / method)
        assert (images != plain).any() and sorted(labels.tolist()) == list(range(10))
    cli_ok(*base, "-w", 1, "--guidance-method", "cfg+minority", "-G", f"classifier={m}", "--out", root / "cm")
    cli_fails(*base, "--guidance-method", "minority", "-G", f"classifier={m}", "-G", "level=3", "--out",
              root / "x", match="levels 0..2")
    cli_fails(*base, "-w", 1, "--guidance-method", "self-minority", "--out", root / "y",
              match="cfg+self-minority")
