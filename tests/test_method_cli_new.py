"""DiffROP and Dispersive Loss end to end on the CPU (the pattern of tests/test_method_cli.py):
`cbdm train --method diffrop|dispersive` on digits, `cbdm sample` with no method flag, `--resume`
bit-exact, `--init-from` a DDPM run, and `cbdm methods` listing both."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from .helpers import METHOD_TINY, assert_same_final_checkpoint, cli_ok, last_checkpoint, train_run

TERMS = {"diffrop": {"diffrop", "diffrop_kl"}, "dispersive": {"dispersive"}}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(METHOD_TINY))
    return path


@pytest.mark.parametrize("method", ["diffrop", "dispersive"])
def test_train_and_sample(method, config, tmp_path):
    run = tmp_path / "run"
    train_run(config, run, "--method", method)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert [m["name"] for m in saved["objective"]["methods"]] == [method]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert TERMS[method] <= set(records[-1]) and all(torch.isfinite(torch.tensor(r["total"])) for r in records)
    cli_ok("sample", run, "-n", "4", "--steps", "2", "--out", tmp_path / "samples")
    assert (tmp_path / "samples" / "manifest.json").exists()


def test_resume_is_bit_exact(config, tmp_path):
    method = "diffrop+dispersive"  # DiffROP's random contrast labels and the dispersive hook in one run
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_run(config, straight, "--method", method, "--steps", "4")
    train_run(config, split, "--method", method, "--steps", "2")
    cli_ok("train", "--out", split, "--resume", "--steps", "4", "--no-progress")
    assert_same_final_checkpoint(straight, split, 4)


def test_init_from_ddpm_adds_no_module(config, tmp_path):
    plain = tmp_path / "ddpm"
    train_run(config, plain, "--method", "ddpm", "--steps", "1")
    run = tmp_path / "ft"
    train_run(config, run, "--method", "diffrop+dispersive", "--init-from", plain, "--steps", "1")
    assert set(last_checkpoint(plain).ema) == set(last_checkpoint(run).ema)  # neither method adds parameters


def test_cbdm_methods_lists_both():
    rows = {r["name"]: r for r in json.loads(cli_ok("methods", "--json").output)}
    assert "from the paper; no released code" in rows["diffrop"]["description"]
    assert "2402.10821" in rows["diffrop"]["paper"] and rows["diffrop"]["code"] == ""
    assert rows["diffrop"]["sweepable"] == ["weight", "margin", "time_power"]
    assert "DispLoss" in rows["dispersive"]["code"] and rows["dispersive"]["sweepable"] == ["weight", "tau"]
    opts = {o["name"]: o for o in rows["dispersive"]["options"]}
    assert opts["weight"]["default"] == 0.5 and opts["tau"]["default"] == 0.5
