"""CCUA end to end on the CPU (the pattern of tests/test_method_cli_new.py): `cbdm train --method
ccua` on digits, `cbdm sample` with no method flag, `--resume` bit-exact, `--init-from` a DDPM
run, and `cbdm methods` saying where its equations come from."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from .helpers import METHOD_TINY, assert_same_final_checkpoint, cli_ok, last_checkpoint, train_run


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(METHOD_TINY))
    return path


def test_train_and_sample(config, tmp_path):
    run = tmp_path / "run"
    train_run(config, run, "--method", "ccua", "-M", "al_min_t=10")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["objective"]["methods"][0]["name"] == "ccua"
    assert saved["objective"]["methods"][0]["options"]["al_min_t"] == 10
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"ccua_ucl", "ccua_al"} <= set(records[-1])
    assert all(torch.isfinite(torch.tensor(r["total"])) for r in records)
    cli_ok("sample", run, "-n", "4", "--steps", "2", "--out", tmp_path / "samples")
    assert (tmp_path / "samples" / "manifest.json").exists()


def test_init_from_ddpm_then_resume_is_bit_exact(config, tmp_path):
    """`--init-from` a DDPM run adds no module (the tap hook has no parameters); `--resume` of
    such a run reproduces the straight run bit for bit."""
    plain, straight, split = tmp_path / "ddpm", tmp_path / "straight", tmp_path / "split"
    train_run(config, plain, "--method", "ddpm", "--steps", "1")
    train_run(config, straight, "--method", "ccua", "--init-from", plain, "--steps", "4")
    train_run(config, split, "--method", "ccua", "--init-from", plain, "--steps", "2")
    cli_ok("train", "--out", split, "--resume", "--steps", "4", "--no-progress")
    a, _ = assert_same_final_checkpoint(straight, split, 4)
    assert set(last_checkpoint(plain).ema) == set(a.ema)


def test_cbdm_methods_says_where_ccua_comes_from():
    rows = {r["name"]: r for r in json.loads(cli_ok("methods", "--json").output)}
    row = rows["ccua"]
    assert "2507.09052" in row["paper"] and "C-Fun" in row["code"]
    assert "released code" in row["description"] and "not read" in row["description"]
    opts = {o["name"]: o for o in row["options"]}
    assert opts["alpha"]["default"] == 1.0 and opts["gamma"]["default"] == 1.0
    assert opts["temperature"]["default"] == 0.1 and opts["al_stop_gradient"]["default"] == "none"
    assert "our choice" in opts["al_min_t"]["description"]
    assert row["sweepable"] == ["alpha", "gamma", "temperature"]
