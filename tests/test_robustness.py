"""Interruption, numerical faults and unwritable folders: nothing complete is lost."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from click.testing import CliRunner

from cbdm_cli.main import cli
from cbdm_core.checkpoint import list_checkpoints, load_checkpoint

from .helpers import TINY, assert_same_final_checkpoint
from .run_helpers import nan_config, nan_registry  # noqa: F401 - nan_registry is a fixture


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, nan_registry):
    res = CliRunner().invoke(cli, ["train", "--config", str(nan_config(tmp_path, ckpt_every=2)), "--out",
                                   str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "non-finite" in res.output
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [s for s, _ in ckpts] == [2]
    ck = load_checkpoint(ckpts[0][1])
    assert all(torch.isfinite(v).all() for v in ck.model.values())


def test_nonfinite_skip_mode_counts_skipped_steps(tmp_path, nan_registry):
    res = CliRunner().invoke(cli, ["train", "--config", str(nan_config(tmp_path)), "--out", str(tmp_path / "run"),
                                   "--no-progress", "--set", "on_nonfinite=skip"])
    assert res.exit_code == 0, res.output
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["skipped_steps"] == 1
    ck = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1][1])
    assert all(torch.isfinite(v).all() for v in ck.model.values())


def test_unwritable_run_folder(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/cbdm-run"  # even root cannot create folders here
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = str(ro / "run")
    res = CliRunner().invoke(cli, ["train", "--out", target, "--no-progress", "--steps", "1"])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "not writable" in res.output


def _spawn(args, tmp_path):
    # Same intra-op thread count as the in-process runs (conftest): CPU reductions depend on it.
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    return subprocess.Popen([sys.executable, "-m", "cbdm_cli", "train", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out")


LONG = {**TINY, "optim": {**TINY["optim"], "steps": 100000}, "log_every": 1}


@pytest.mark.slow
def test_sigterm_saves_and_resume_matches_straight_run(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(LONG))
    run = tmp_path / "run"
    proc = _spawn(["--config", tmp_path / "c.yaml", "--out", run, "--no-progress"], tmp_path)
    log = run / "metrics.jsonl"
    _wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130
    ckpts = list_checkpoints(run / "checkpoints")
    assert len(ckpts) == 1
    stopped = ckpts[0][0]
    assert stopped >= 3
    target = stopped + 2
    res = CliRunner().invoke(cli, ["train", "--out", str(run), "--resume", "--steps", str(target), "--no-progress"])
    assert res.exit_code == 0, res.output
    straight = tmp_path / "straight"
    res = CliRunner().invoke(cli, ["train", "--config", str(tmp_path / "c.yaml"), "--out", str(straight),
                                   "--steps", str(target), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert_same_final_checkpoint(run, straight, target, ema=False)


@pytest.mark.slow
def test_sigkill_leaves_only_complete_checkpoints(tmp_path):
    cfg = {**LONG, "ckpt_every": 1, "keep_last": 2}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    proc = _spawn(["--config", tmp_path / "c.yaml", "--out", run, "--no-progress"], tmp_path)
    _wait_for(lambda: len(list_checkpoints(run / "checkpoints")) >= 2, proc)
    time.sleep(0.3)
    proc.kill()  # SIGKILL, most likely during one of the frequent checkpoint writes
    proc.wait(timeout=60)
    ckpts = list_checkpoints(run / "checkpoints")
    assert ckpts
    for _, path in ckpts:
        load_checkpoint(path, with_optim=True)  # every visible checkpoint is complete
    last = ckpts[-1][0]
    res = CliRunner().invoke(cli, ["train", "--out", str(run), "--resume", "--steps", str(last + 1), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert not list((run / "checkpoints").glob(".ckpt-*.tmp"))
