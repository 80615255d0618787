"""Reliability round four: what a first-user and a plugin-author audit found (session 14).

Each test reproduces a reported failure; it failed before the fix.
"""

from __future__ import annotations

import pytest
import torch

from .helpers import cli_fails, cli_ok


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_overwrite_refused_for_its_config_keeps_the_previous_run(tmp_path, tiny_config):
    """`--overwrite` removed the old run before the new config was built: a refused new run left neither."""
    cfg, run = tiny_config.write(tmp_path), tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2")
    before = {p: (run / p).read_bytes() for p in _listing(run)}
    assert any(p.startswith("checkpoints/") for p in before)
    cli_fails("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "2", "--overwrite",
              "--set", "model.options.ch=6", match="divisible")
    assert {p: (run / p).read_bytes() for p in _listing(run)} == before
    cli_ok("sample", run, "--sampler", "ddim", "--steps", "2", "-n", "3", "--no-progress")
