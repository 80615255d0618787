"""Classifier guidance (guidance plugins ``classifier`` and ``cfg+classifier``) and the
noise-aware classifier of ``cbdm train-classifier --noisy``."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from cbdm_core.errors import CbdmError
from cbdm_core.guidance_classifier.guide import classifier_term, log_prob_gradient
from cbdm_core.guidance_classifier.net import (NoisyClassifier, NoisyClassifierOptions, load_noisy_classifier,
                                               save_noisy_classifier)
from cbdm_core.sampling import sample
from cbdm_core.sampling.guidance import cfg_denoiser
from cbdm_core.sampling.shards import load_samples
from cbdm_core.schedules import CosineSchedule, LinearSchedule
from tests.helpers import TINY, LinearClassifier, LinearDenoiser, cli_fails, cli_ok


def _released_update(clf: LinearClassifier, x, t, y, eps, schedule, s):
    """guided-diffusion's update, re-derived (openai/guided-diffusion @ 22e0df8):

    * scripts/classifier_sample.py lines 54-61, cond_fn: grad_x of log_softmax(classifier(x, t))[y],
      times classifier_scale;
    * guided_diffusion/gaussian_diffusion.py lines 381-386, condition_score:
      eps <- eps - sqrt(1 - alpha_bar_t) * cond_fn(x, t) (eps from the unclipped pred_xstart is eps itself).

    The gradient of log softmax(W x + b)_y is W_y - sum_k p_k W_k, written out here by hand.
    """
    logits = clf(x, t).detach()
    p = logits.softmax(dim=-1)
    W = clf.W.detach()
    grad = (W[y] - p @ W).view_as(x)
    alpha_bar = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    return eps - (1 - alpha_bar).sqrt() * (grad * s)


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_classifier_term_equals_guided_diffusion_condition_score(scale):
    schedule = LinearSchedule(T=50)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 2, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 1, 2, 2, generator=g, dtype=torch.float64)
    t, y = torch.tensor([0, 7, 30, 49]), torch.tensor([0, 2, 1, 2])
    clf = LinearClassifier().requires_grad_(False)
    denoise = classifier_term(lambda *_: eps, clf, schedule, scale, null_label=3)
    with torch.no_grad():  # samplers run under no_grad: the term must enable gradients itself
        got = denoise(x, t, y)
    torch.testing.assert_close(got, _released_update(clf, x, t, y, eps, schedule, scale), rtol=1e-10, atol=1e-12)


def test_cfg_plus_classifier_is_cfg_then_the_classifier_term():
    schedule = LinearSchedule(T=50)
    model = LinearDenoiser(num_classes=3).double()
    clf = LinearClassifier().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 2, 2, generator=g, dtype=torch.float64)
    t, y = torch.tensor([3, 10, 20, 40]), torch.tensor([0, 1, 2, 3])  # the last row is the null label
    with torch.no_grad():
        got = classifier_term(cfg_denoiser(model, 2.0, 3), clf, schedule, 1.5, null_label=3)(x, t, y)
        cfg = 3.0 * model(x, t, y) - 2.0 * model(x, t, torch.full_like(y, 3))
    want = _released_update(clf, x[:3], t[:3], y[:3], cfg[:3], schedule, 1.5)
    torch.testing.assert_close(got[:3], want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[3], model(x, t, y)[3])  # the null row: no class to guide to


def test_gradient_matches_autograd_of_a_noisy_classifier():
    torch.manual_seed(0)
    clf = NoisyClassifier(NoisyClassifierOptions(in_channels=1, num_classes=3, image_size=8)).eval()
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([5, 60]), torch.tensor([1, 2])
    with torch.no_grad():
        got = log_prob_gradient(clf, x, t, y)
    x_in = x.clone().requires_grad_(True)
    lp = clf(x_in, t).log_softmax(-1)
    (want,) = torch.autograd.grad(lp[0, 1] + lp[1, 2], x_in)
    torch.testing.assert_close(got, want)
    assert got.abs().sum() > 0


def test_file_round_trip_and_mismatches(tmp_path):
    clf = NoisyClassifier(NoisyClassifierOptions(in_channels=1, num_classes=3, image_size=2))
    path = tmp_path / "c.safetensors"
    save_noisy_classifier(clf, LinearSchedule(T=50), path, {"accuracy_by_t": [{"t_lo": 0, "accuracy": 0.5}]})
    back, sched = load_noisy_classifier(path)
    assert back.meta["accuracy_by_t"][0]["accuracy"] == 0.5 and sched.num_timesteps == 50
    x = torch.randn(2, 1, 2, 2)
    y = torch.tensor([0, 1])
    common = dict(guidance_method="classifier", guidance_options={"classifier": str(path), "scale": 1.0})
    model = LinearDenoiser(num_classes=3)
    out = sample(model, LinearSchedule(T=50), x, y, steps=2, **common)
    assert torch.isfinite(out).all()
    with pytest.raises(CbdmError, match="another noise schedule"):
        sample(model, CosineSchedule(T=50), x, y, steps=2, **common)
    with pytest.raises(CbdmError, match="3 classes, the model 5"):
        sample(LinearDenoiser(num_classes=5), LinearSchedule(T=50), x, y, steps=2, **common)
    with pytest.raises(CbdmError, match="takes images 1x2x2"):
        sample(model, LinearSchedule(T=50), torch.randn(2, 1, 3, 3), y, steps=2, **common)
    with pytest.raises(CbdmError, match="--guidance-method cfg\\+classifier"):
        sample(model, LinearSchedule(T=50), x, y, steps=2, guidance=1.0, **common)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("clfguide")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    cli_ok("train", "--config", root / "tiny.yaml", "--out", root / "run", "--no-progress")
    res = cli_ok("train-classifier", "--noisy", root / "run", "--out", root / "clf.safetensors",
                 "--epochs", 1, "--bins", 4)
    return root, res.output


def test_train_classifier_records_schedule_and_accuracy_per_t(tiny_run):
    root, output = tiny_run
    clf, sched = load_noisy_classifier(root / "clf.safetensors")
    assert sched.num_timesteps == TINY["diffusion"]["T"] and clf.meta["balanced"] is True
    rows = clf.meta["accuracy_by_t"]
    assert [(r["t_lo"], r["t_hi"]) for r in rows] == [(0, 24), (25, 49), (50, 74), (75, 99)]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    assert f"t    75-99    accuracy {rows[-1]['accuracy']:.3f}" in output
    assert clf.meta["num_classes"] == 10 and clf.meta["image_size"] == 8


def test_cbdm_sample_with_classifier_guidance_resumes_and_changes_images(tiny_run):
    root, _ = tiny_run
    clf = root / "clf.safetensors"
    base = ("sample", root / "run", "--steps", 2, "-n", 10, "--no-progress", "--classes", "balanced")
    cli_ok(*base, "--out", root / "plain")
    guided = (*base, "--guidance-method", "classifier", "-G", f"classifier={clf}", "-G", "scale=200",
              "--out", root / "g")
    cli_ok(*guided)
    manifest = json.loads((root / "g" / "manifest.json").read_text())["settings"]
    assert manifest["guidance_method"] == "classifier"
    assert manifest["guidance_options"] == {"classifier": str(clf), "scale": 200.0}
    assert "0 written, 1 kept" in cli_ok(*guided).output  # resumes from the manifest
    a, la = load_samples(root / "plain")
    b, lb = load_samples(root / "g")
    assert (la == lb).all() and sorted(la.tolist()) == list(range(10))
    assert (a != b).any()
    cli_ok(*base, "-w", 1, "--guidance-method", "cfg+classifier", "-G", f"classifier={clf}", "--out", root / "c")
    cli_fails(*base, "-w", 1, "--guidance-method", "classifier", "-G", f"classifier={clf}", "--out", root / "x",
              match="use --guidance-method cfg+classifier")
    cli_fails(*base, "--guidance-method", "classifier", "-G", f"classifier={root / 'nope'}", match="does not exist")


def test_train_classifier_refuses_an_unknown_source(tmp_path):
    cli_fails("train-classifier", "--noisy", "no-such-thing", "--out", tmp_path / "c.safetensors",
              match="neither a run folder")


def test_float_timesteps_interpolate_abar_and_heun_runs(tmp_path):
    from cbdm_core.guidance_classifier.guide import sqrt_one_minus_abar

    schedule = LinearSchedule(T=50)
    like = torch.zeros(3, 1, 2, 2)
    exact = sqrt_one_minus_abar(schedule, torch.tensor([4, 5, 49]), like).flatten()
    half = sqrt_one_minus_abar(schedule, torch.tensor([4.0, 4.5, 49.0]), like).flatten()
    torch.testing.assert_close(half[[0, 2]], exact[[0, 2]])
    assert exact[0] < half[1] < exact[1]
    clf = NoisyClassifier(NoisyClassifierOptions(in_channels=1, num_classes=3, image_size=2))
    save_noisy_classifier(clf, schedule, tmp_path / "c.safetensors", {})
    out = sample(LinearDenoiser(num_classes=3), schedule, torch.randn(2, 1, 2, 2), torch.tensor([0, 1]),
                 sampler="heun", steps=3, guidance_method="classifier",
                 guidance_options={"classifier": str(tmp_path / "c.safetensors"), "scale": 2.0})
    assert torch.isfinite(out).all()


def test_manifest_records_the_guidance_classifier_by_content(tiny_run):
    """A retrained classifier file at the same path is other images: its sha256 is in the
    manifest, and a kept folder guided by the old file is refused (like retrained weights)."""
    from cbdm_core.experiments.provenance import file_digest

    root, _ = tiny_run
    clf = root / "clf-digest.safetensors"
    clf.write_bytes((root / "clf.safetensors").read_bytes())
    guided = ("sample", root / "run", "--steps", 2, "-n", 4, "--no-progress", "--guidance-method", "classifier",
              "-G", f"classifier={clf}", "-G", "scale=50", "--out", root / "gd")
    cli_ok(*guided)
    settings = json.loads((root / "gd" / "manifest.json").read_text())["settings"]
    assert settings["guidance_files_sha256"] == {"classifier": file_digest(clf)}
    assert "0 written, 1 kept" in cli_ok(*guided).output  # same file content: kept
    model, schedule = load_noisy_classifier(clf)
    with torch.no_grad():
        model.head.weight.mul_(-1.0)  # "retrained": same path, other weights
    save_noisy_classifier(model, schedule, clf, model.meta)
    cli_fails(*guided, match="guided by another version of classifier")
    before, _ = load_samples(root / "gd")
    assert "1 written" in cli_ok(*guided, "--overwrite").output
    after, _ = load_samples(root / "gd")
    assert (before != after).any()
    settings = json.loads((root / "gd" / "manifest.json").read_text())["settings"]
    assert settings["guidance_files_sha256"] == {"classifier": file_digest(clf)}
    manifest = json.loads((root / "gd" / "manifest.json").read_text())
    del manifest["settings"]["guidance_files_sha256"]  # a folder sampled before the hashes
    (root / "gd" / "manifest.json").write_text(json.dumps(manifest))
    cli_fails(*guided, match="predates guidance file hashes")
