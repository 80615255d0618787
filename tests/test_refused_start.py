"""A new user's first mistakes: a folder that is not a run, and a refused start, which must
leave nothing behind (no lock file, no empty folder)."""

from __future__ import annotations

import yaml

from cbdm_core import locks

from .helpers import TINY, cli_fails, cli_ok
from .run_helpers import write_toy_run

FAST = ["--no-progress", "--steps", "1"]


def test_sample_on_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "qs").mkdir()  # `cbdm sample runs` for `cbdm sample runs/qs`
    (tmp_path / "qs" / "config.yaml").write_text("{}\n")
    line = cli_fails("sample", tmp_path, "--no-progress", match="is not a run folder")
    assert "config.yaml" in line and f"runs inside it: {tmp_path / 'qs'}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qs"]  # nothing written


def test_run_without_checkpoint_is_named_as_such(tmp_path):
    (tmp_path / "config.yaml").write_text("{}\n")
    cli_fails("sample", tmp_path, "--no-progress", match="no checkpoint found")


def test_refused_train_leaves_no_lock_and_no_folder(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, *FAST)
    assert not (run / locks.LOCK_NAME).exists()  # the lock file lives while a process holds it
    before = sorted(p.name for p in run.rglob("*"))
    cli_fails("train", "--config", cfg, "--out", run, *FAST, match="already holds a run")
    assert sorted(p.name for p in run.rglob("*")) == before

    fresh = tmp_path / "fresh"  # refused after the folder was made and locked: missing data files
    cli_fails("train", "--config", cfg, "--out", fresh, "--dataset", "mnist-lt", "--data-root",
              tmp_path / "no-data", *FAST, match="no-data")
    assert not fresh.exists()


def test_refused_sample_leaves_no_lock_or_folder(tmp_path):
    run = write_toy_run(tmp_path / "run")
    out = tmp_path / "samples"
    cli_ok("sample", run, "--out", out, "--steps", "2", "--num", "3", "--no-progress")
    assert not (out / locks.LOCK_NAME).exists()
    before = sorted(p.name for p in out.iterdir())
    cli_fails("sample", run, "--out", out, "--steps", "3", "--num", "3", "--no-progress", match="other settings")
    assert sorted(p.name for p in out.iterdir()) == before
