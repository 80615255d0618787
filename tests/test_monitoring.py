"""Training monitoring (issue 17 item 2) and periodic checkpoints by default (item 3)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cbdm_cli.main import cli
from cbdm_core.checkpoint import list_checkpoints
from cbdm_core.config import TrainConfig
from cbdm_core.presets_registry import load_preset
from cbdm_core.training.monitor import logged_terms, progress_line
from .helpers import MONITOR_TINY




def _train(tmp_path: Path, *args: str, cfg: dict = MONITOR_TINY):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", "--config", str(path), "--out", str(out), *args])
    return out, res


def test_default_config_checkpoints_every_15_minutes():
    cfg = TrainConfig()
    assert cfg.ckpt_every_minutes == 15 and cfg.keep_last >= 1
    for name in ("quickstart", "paper-base"):  # presets still validate with the new field
        assert TrainConfig.model_validate(load_preset(name)).ckpt_every_minutes > 0


def test_wall_time_checkpoints(tmp_path, monkeypatch):
    # A clock that jumps 20 minutes per reading: every step is past due, so every step saves
    # (keep_last bounds how many stay on disk).
    ticks = iter(range(0, 10**6, 1200))
    monkeypatch.setattr("cbdm_core.training.loop.time.monotonic", lambda: float(next(ticks)))
    out, res = _train(tmp_path, "--no-progress", "--keep-last", "2", cfg={**MONITOR_TINY, "keep_last": 2})
    assert res.exit_code == 0, res.output
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [3, 4]


def test_no_wall_time_checkpoints_when_off(tmp_path, monkeypatch):
    ticks = iter(range(0, 10**6, 1200))
    monkeypatch.setattr("cbdm_core.training.loop.time.monotonic", lambda: float(next(ticks)))
    out, res = _train(tmp_path, "--no-progress", "--ckpt-every-minutes", "0")
    assert res.exit_code == 0, res.output
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [4]


def test_plain_progress_lines_without_terminal(tmp_path):
    # CliRunner's stderr is not a terminal, as under nohup or SLURM.
    out, res = _train(tmp_path)
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines] == ["2/4", "4/4"]
    for part in ("loss ", "img/s", "eta ", "mem "):
        assert part in lines[0]
    assert f"next: cbdm sample {out}" in res.output
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(abs(r["time"] - time.time()) < 600 for r in records)
    assert 0 < records[0]["elapsed"] <= records[1]["elapsed"]
    assert "commitment" not in records[0] and "regularizer" in records[0]


def test_progress_line_and_logged_terms():
    line = progress_line({"step": 5, "total": 0.5, "diffusion": 0.4, "images_per_sec": 12.0, "memory_gb": 1.5,
                          "lr": 1e-3, "time": 1.0, "elapsed": 2.0}, 10, 65)
    assert line.startswith("step 5/10") and "eta 1m05s" in line and "mem 1.50 GB" in line and "lr" not in line
    assert logged_terms({"regularizer": 1, "commitment": 1, "x": 2}) == {"regularizer": 1, "x": 2}
    assert logged_terms({"commitment": 1}) == {"commitment": 1}


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="tensorboard not installed (pip install 'cbdm[tensorboard]')")
def test_tensorboard_log(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, res = _train(tmp_path, "--no-progress", "--log", "tensorboard")
    assert res.exit_code == 0, res.output
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/total", "train/diffusion", "train/regularizer", "run/lr", "run/grad_norm",
            "run/images_per_sec"} <= tags
    assert [e.step for e in acc.Scalars("train/total")] == [2, 4]


def test_tensorboard_missing_is_one_line(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    _, res = _train(tmp_path, "--no-progress", "--log", "tensorboard")
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "pip install" in res.output and len(res.output.strip().splitlines()) == 1
