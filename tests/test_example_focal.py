"""The example third-party plugin examples/cbdm-focal (one module, one entry point): a method
that reweights the per-row base loss (``sample_weight``) and a guidance with an option
(``-G KEY=VALUE``), installed and run through the real CLI in subprocesses."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cbdm_core import registry
from cbdm_core.sampling.shards import load_samples, read_manifest
from tests.helpers import (assert_same_final_checkpoint, cbdm_subprocess, cli_fails, cli_ok, install_copy, make_ctx,
                           run_step, tiny_unet)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cbdm-focal"
TINY = {"model": {"options": {"ch": 8, "ch_mult": [1, 2], "attn": [1], "num_res_blocks": 1, "num_groups": 4}},
        "diffusion": {"T": 50}, "data": {"dataset": "digits-lt"}, "objective": {"p_uncond": 0.2},
        # A large lr and a short EMA: after 2 steps eps(x, y) - eps(x, null) is large enough to guide with.
        "optim": {"batch_size": 8, "steps": 2, "warmup": 1, "lr": 0.01, "ema_decay": 0.5}, "preview": {"steps": 2, "per_class": 1},
        "perf": {"amp": "off", "compile": "off", "channels_last": "off"}, "device": "cpu", "log_every": 1}


def _module():
    """The example module itself, for checks on a fixed batch (no install needed)."""
    spec = importlib.util.spec_from_file_location("cbdm_focal_example", EXAMPLE / "cbdm_focal.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return install_copy(EXAMPLE, tmp_path_factory.mktemp("focal"))


@pytest.fixture(scope="module")
def in_process():
    """The example registered in this process, for the in-process CLI (fewer interpreter starts)."""
    registry._DEFAULT = registry.build_registry([_module()])
    yield
    registry.reset_registry()


@pytest.fixture(scope="module")
def runs(env, in_process, tmp_path_factory):
    """Three 2-step runs from the same seed: focal-t with gamma=2 (installed plugin, subprocess),
    ddpm and focal-t with gamma=0 (in process)."""
    root = tmp_path_factory.mktemp("focal-runs")
    (root / "c.yaml").write_text(yaml.safe_dump(TINY))
    train = ("train", "--config", root / "c.yaml", "--no-progress")
    proc = cbdm_subprocess(env, *train, "--out", root / "focal", "--method", "focal-t", "-M", "gamma=2")
    assert proc.returncode == 0, proc.stderr
    cli_ok(*train, "--out", root / "ddpm", "--method", "ddpm")
    cli_ok(*train, "--out", root / "ones", "--method", "focal-t", "-M", "gamma=0")
    return {name: root / name for name in ("focal", "ddpm", "ones")}


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_weighted_diffusion_is_the_hand_computed_weighted_mean():
    focal = _module().FocalT(gamma=2.0)
    ctx = make_ctx(tiny_unet(), b=6)
    _, terms, pred = run_step(tiny_unet(), [focal], ctx)
    w = (1.0 - ctx.schedule.alphas_cumprod[ctx.t]).pow(2).float()
    by_hand = (w.view(-1, 1, 1, 1) * (pred - ctx.target).pow(2)).mean()
    torch.testing.assert_close(terms["diffusion"], by_hand, rtol=1e-6, atol=0)
    _, plain, _ = run_step(tiny_unet(), [], ctx)
    assert terms["diffusion"] < plain["diffusion"]  # every weight is below 1


def test_ones_weight_trains_bit_identically_to_ddpm(runs):
    assert_same_final_checkpoint(runs["ddpm"], runs["ones"], step=2)
    ddpm, ones = _records(runs["ddpm"]), _records(runs["ones"])
    assert [(r["diffusion"], r["total"]) for r in ddpm] == [(r["diffusion"], r["total"]) for r in ones]


def test_logged_diffusion_is_the_weighted_loss(runs):
    # Same seed, same first batch and network: only the weighting differs at step 1.
    ddpm, focal = _records(runs["ddpm"])[0], _records(runs["focal"])[0]
    assert focal["step"] == ddpm["step"] == 1
    assert 0 < focal["diffusion"] < ddpm["diffusion"]
    assert focal["total"] == pytest.approx(focal["diffusion"])  # focal-t adds no term of its own


SAMPLE = ("--num-samples", "6", "--steps", "2", "-w", "3", "--no-progress")


def test_guidance_option_changes_the_images_and_the_default_folder(env, runs):
    run = runs["focal"]
    images = {}
    for clip in ("0.001", "1000"):
        args = ("sample", run, *SAMPLE, "--guidance-method", "clipped-cfg", "-G", f"clip={clip}")
        if clip == "0.001":  # the installed plugin through a real `cbdm` process
            proc = cbdm_subprocess(env, *args)
            assert proc.returncode == 0, proc.stderr
        else:  # in process: the same code, one interpreter start less
            cli_ok(*args)
        folder = run / f"samples-ddim-2-w3-clipped-cfg-clip={clip}"
        settings = read_manifest(folder)["settings"]
        assert settings["guidance_method"] == "clipped-cfg"
        assert settings["guidance_options"] == {"clip": float(clip)}
        images[clip] = load_samples(folder)[0]
    assert images["0.001"].shape[0] == 6
    assert not np.array_equal(images["0.001"], images["1000"])
    proc = cbdm_subprocess(env, "sample", run, *SAMPLE, "--guidance-method", "clipped-cfg", "-G", "clp=1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "Error: unknown option 'clp' of guidance 'clipped-cfg'; valid options: clip"


def test_plain_cfg_keeps_its_folder_name(runs):
    cli_ok("sample", runs["ddpm"], *SAMPLE)
    assert "guidance_options" not in read_manifest(runs["ddpm"] / "samples-ddim-2-w3")["settings"]


def test_other_guidance_options_are_not_reused_in_a_kept_folder(runs, tmp_path):
    out = tmp_path / "s"
    cli_ok("sample", runs["ddpm"], *SAMPLE, "--guidance-method", "clipped-cfg", "-G", "clip=0.5", "--out", out)
    cli_fails("sample", runs["ddpm"], *SAMPLE, "--guidance-method", "clipped-cfg", "-G", "clip=2", "--out", out,
              match='guidance_options: {"clip": 0.5} -> {"clip": 2.0}')


@pytest.mark.parametrize("args, message", [
    (("--guidance-method", "clipped-cfg", "-G", "clip=-1"), "invalid option clip of guidance 'clipped-cfg'"),
    (("--guidance-method", "clipped-cfg:0.5",), "write 'clipped-cfg' with -G KEY=0.5"),
    (("-G", "clip=1"), "guidance 'cfg' takes no options; got 'clip'"),
    (("-G", "clip"), "--guidance-option expects KEY=VALUE, got 'clip'"),
])
def test_bad_guidance_options_are_one_line(runs, tmp_path, args, message):
    cli_fails("sample", runs["ddpm"], *SAMPLE, "--out", tmp_path / "s", *args, match=message)
    assert not (tmp_path / "s").exists()  # refused before anything was written
