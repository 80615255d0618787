"""SIGKILL `cbdm train` at random moments, many times, resuming each time: the final
weights equal an uninterrupted run's bit for bit, and the folder holds no temporary
files and no duplicate metrics lines.

The training runs in children of a multiprocessing fork server that imported torch and
the CLI once, so a kill and restart costs a fraction of a second instead of a fresh
interpreter. (A plain fork of the pytest process could hang: OpenMP is not fork-safe once
a parent has used it; the fork server never runs torch code itself.)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import time

import pytest
import torch
import yaml

from cbdm_core.checkpoint import list_checkpoints, load_checkpoint
from .helpers import TINY


pytestmark = pytest.mark.slow

STEPS = 8
CONFIG = {**TINY, "optim": {**TINY["optim"], "steps": STEPS}, "ckpt_every": 1, "log_every": 1, "keep_last": 2,
          "preview": {**TINY["preview"], "per_class": 1, "steps": 2}}


def _train_in_child(args: list[str]) -> None:
    """Child side: run the command quietly, exit with its status."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    code = 1
    try:
        import torch as _torch

        from cbdm_cli.main import cli

        _torch.set_num_threads(1)  # the same in every child: CPU reductions depend on it
        cli.main([str(a) for a in args], prog_name="cbdm", standalone_mode=False)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - any failure is a non-zero exit
        code = 1
    finally:
        os._exit(code)


def _attempt(ctx, args: list, delay: float) -> bool:
    """Run ``cbdm ARGS`` in a child, SIGKILL it after ``delay`` s; True when it finished first."""
    proc = ctx.Process(target=_train_in_child, args=([str(a) for a in args],))
    proc.start()
    proc.join(delay)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        return False
    assert proc.exitcode == 0, f"cbdm {' '.join(map(str, args))} failed ({proc.exitcode})"
    return True


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_random_sigkills_then_resume_give_the_uninterrupted_weights(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "cbdm_cli.main"])
    assert _attempt(ctx, ["train", "--config", config, "--out", tmp_path / "straight", "--no-progress"], 300)
    run = tmp_path / "run"
    rng = random.Random(16)
    kills, finished = 0, False
    for _ in range(40):
        # Short delays die in start-up, longer ones mid-step or mid-checkpoint; after 12 kills let it finish.
        args = ["train", "--out", run, "--resume", "--no-progress"]
        if not (run / "config.yaml").exists():
            args += ["--config", config]
        finished = _attempt(ctx, args, rng.uniform(0.05, 1.0) if kills < 12 else 300)
        kills += not finished
        if finished:
            break
    assert finished and kills >= 10
    a = load_checkpoint(list_checkpoints(run / "checkpoints")[-1][1], with_optim=True)
    b = load_checkpoint(list_checkpoints(tmp_path / "straight" / "checkpoints")[-1][1], with_optim=True)
    assert a.step == b.step == STEPS
    for name in b.model:
        assert torch.equal(a.model[name], b.model[name]), name
        assert torch.equal(a.ema[name], b.ema[name]), name
    leftovers = [p for p in run.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp")]
    assert not leftovers
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))
