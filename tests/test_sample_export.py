"""EDM-style sampling (issue 17 item 6): PNG class folders, --seeds, and torchrun splitting."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cbdm_cli.main import cli
from cbdm_cli.sample_cmd import parse_seeds
from cbdm_core.errors import CbdmError
from cbdm_core.evaluation.inputs import read_image_folder, read_samples
from cbdm_core.sampling.shards import load_samples
from .run_helpers import write_sample_run

FAST = ["--steps", "3", "--no-progress", "--device", "cpu", "-n", "7", "--batch-size", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return write_sample_run(tmp_path_factory.mktemp("run") / "run", 0.1)


def _sample(run: Path, out: Path, *args: str) -> str:
    res = CliRunner().invoke(cli, ["sample", str(run), "--out", str(out), *FAST, *args])
    assert res.exit_code == 0, res.output
    return res.output


def test_png_folders_equal_npz_shards_and_eval_reads_them(run, tmp_path):
    _sample(run, tmp_path / "npz", "--shard-size", "3")
    text = _sample(run, tmp_path / "png", "--format", "png")
    assert f"next: cbdm eval {tmp_path / 'png'} --dataset " in text
    images, labels = load_samples(tmp_path / "npz")
    pngs = sorted((tmp_path / "png").glob("*/*.png"))
    assert [p.parent.name for p in pngs].count("a") == 3 and pngs[0].name == "000000.png"
    got = read_samples(tmp_path / "png")  # through the manifest
    assert got.kind == "sample-folder"
    assert np.array_equal(got.images.permute(0, 2, 3, 1).numpy(), images)
    assert np.array_equal(got.labels.numpy(), labels)
    # The class folders alone (copied elsewhere) read as a labelled image folder.
    bare = tmp_path / "bare"
    shutil.copytree(tmp_path / "png", bare, ignore=shutil.ignore_patterns("*.json", "grid.png"))
    assert sorted(read_image_folder(bare, ["a", "b", "c"]).labels.tolist()) == sorted(labels.tolist())


def test_seeds_regenerate_chosen_images(run, tmp_path):
    full = tmp_path / "full"
    _sample(run, full, "--shard-size", "3")
    images, _ = load_samples(full)
    part = tmp_path / "part"
    _sample(run, part, "--shard-size", "3", "--seeds", "4-5")  # shard 1 is made whole, shard 0 and 2 not
    assert sorted(p.name for p in part.glob("shard-*.npz")) == ["shard-00001.npz"]
    with pytest.raises(CbdmError, match="incomplete"):
        load_samples(part)
    _sample(run, part, "--shard-size", "3")  # resume fills in the rest
    assert np.array_equal(load_samples(part)[0], images)
    # Damage an image, then regenerate only it.
    png = tmp_path / "png"
    _sample(run, png, "--format", "png")
    victim = next(png.glob("b/000003.png"))
    before = victim.read_bytes()
    victim.write_bytes(b"junk")
    _sample(run, png, "--format", "png", "--seeds", "3")
    assert victim.read_bytes() == before


def test_parse_seeds():
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    for bad in ("x", "3-1", "-1"):
        with pytest.raises(CbdmError):
            parse_seeds(bad)


def test_seeds_out_of_range_is_one_line(run, tmp_path):
    res = CliRunner().invoke(cli, ["sample", str(run), "--out", str(tmp_path / "s"), *FAST, "--seeds", "5-9"])
    assert res.exit_code != 0 and "Traceback" not in res.output and "0..6" in res.output


@pytest.mark.slow
def test_two_gloo_ranks_make_the_same_images(run, tmp_path):
    one = tmp_path / "one"
    _sample(run, one, "--format", "png")
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for fmt, extra in (("png", []), ("npz", ["--shard-size", "2"])):
        two = tmp_path / f"two-{fmt}"
        cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "cbdm_cli", "sample", str(run),
               "--out", str(two), *FAST, "--format", fmt, *extra]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        a, b = read_samples(one), read_samples(two)
        assert np.array_equal(a.images.numpy(), b.images.numpy()), fmt
        assert np.array_equal(a.labels.numpy(), b.labels.numpy())
