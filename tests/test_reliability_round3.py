"""Issue 24 ("reliability round three"): a study continues after a crash before the first
checkpoint, every read of a file cbdm wrote is hash-checked, cache writes never abort an
evaluation, a damaged metrics.jsonl loses nothing on resume, identical weights hash alike.

Each test reproduces the reported failure; it failed before the fix.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cbdm_core import locks
from cbdm_core.config import dump_config_yaml
from cbdm_core.experiments.compare import plan_study
from cbdm_core.experiments.protocol import parse_protocol

from .helpers import cli_fails, cli_ok, invoke_cli
from .test_compare import tiny_protocol, write_protocol
from .test_reliability import _Holder


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _dead_pid() -> int:
    """The PID of a process that has exited (what a crashed run leaves in its lock file)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


# -- item 2: a study continues after a crash before a run's first checkpoint ---------------------------------


# In-process, and in worker processes (slow: each spawned worker imports torch).
@pytest.mark.parametrize("jobs", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_compare_restarts_a_run_that_crashed_before_its_first_checkpoint(tmp_path, jobs):
    raw = tiny_protocol(tmp_path, seeds=[0], methods=[{"method": "ddpm"}], guidance={"fixed": 1.0})
    proto = write_protocol(tmp_path / "tiny.yaml", raw)
    out = tmp_path / "study"
    run = out / "runs" / "ddpm" / "seed-0"
    run.mkdir(parents=True)
    # What a run killed before its first checkpoint leaves: its config, some metrics, a lock file.
    cfg = plan_study(parse_protocol(raw), out).configs[("ddpm", 0)]
    (run / "config.yaml").write_text(dump_config_yaml(cfg))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n')
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out").write_bytes(b"old")
    # A live process holding the folder: never touched, one-line refusal.
    holder = _Holder(run)
    try:
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != locks.LOCK_NAME}
        cli_fails("compare", proto, "--out", out, "--no-progress", "--jobs", jobs,
                  match="in use by another cbdm process")
        assert {p.name: p.read_bytes() for p in run.iterdir()
                if p.is_file() and p.name != locks.LOCK_NAME} == before
    finally:
        holder.kill()
    (run / locks.LOCK_NAME).write_text(f"{_dead_pid()}\n")  # stale: its holder is dead
    cli_ok("compare", proto, "--out", out, "--no-progress", "--jobs", jobs)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2] and (out / "compare.json").is_file()
    assert not (run / "tensorboard" / "events.out").exists()
