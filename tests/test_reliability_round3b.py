"""Issue 24 ("reliability round three"), the remaining items: retrained runs never serve the
old model's samples, every setting is validated before any work, YAML alias bombs, broken
plugins, PNG decompression bombs, workers that outlive their parent, bounded sizes.

Each test reproduces the reported failure; it failed before the fix.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml

from .helpers import cli_fails, cli_ok
from .test_cli_train import TINY


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _tiny_config(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


def _folder_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.glob("shard-*.npz")):
        h.update(p.read_bytes())
    return h.hexdigest()


# -- item 1: samples of a retrained run come from the new model -----------------------------------------------


def test_sampling_after_train_overwrite_uses_the_new_model(tmp_path):
    cfg, run = _tiny_config(tmp_path), tmp_path / "run"
    sample = ("sample", run, "--sampler", "ddim", "--steps", "2", "-n", "4", "--no-progress")
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "4")
    cli_ok(*sample)
    (folder,) = run.glob("samples-*")
    (folder / "eval.json").write_text("{}")  # what `cbdm eval` leaves in the folder
    before = _folder_hash(folder)
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "4", "--seed", "5",
           "--lr", "0.01", "--overwrite")
    assert not folder.exists()  # the old run's samples (and their evaluation) went with it
    res = cli_ok(*sample)
    assert "kept" not in res.output or "0 kept" in res.output, res.output
    assert _folder_hash(folder) != before


def test_a_sample_folder_of_other_weights_is_refused(tmp_path):
    """Same checkpoint path and step, other weights (a folder restored from elsewhere)."""
    cfg, run = _tiny_config(tmp_path), tmp_path / "run"
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "4")
    out = tmp_path / "s"
    sample = ("sample", run, "--sampler", "ddim", "--steps", "2", "-n", "4", "--no-progress", "--out", out)
    cli_ok(*sample)
    cli_ok("train", "--config", cfg, "--out", run, "--no-progress", "--steps", "4", "--seed", "5", "--overwrite")
    cli_fails(*sample, match="weights")
    cli_ok(*sample, "--overwrite")
