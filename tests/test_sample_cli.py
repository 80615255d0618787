"""``cbdm sample`` end to end on a tiny untrained checkpoint (ddim, 5 steps, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cbdm_cli.main import cli
from cbdm_core.errors import CbdmError
from cbdm_core.sampling.plan import apportion, class_sample_counts, plan_labels
from cbdm_core.sampling.shards import load_samples, read_shard
from .run_helpers import write_sample_run

FAST = ["--steps", "5", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    return {"run": write_sample_run(base / "run", 0.1), "nodrop": write_sample_run(base / "nodrop", 0.0)}


def _invoke(*args) -> "object":
    return CliRunner().invoke(cli, ["sample", *map(str, args)])


def _ok(*args):
    res = _invoke(*args)
    assert res.exit_code == 0, res.output
    return res


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


# -- label plan (no sampling) --------------------------------------------------------------

def test_plan_counts():
    assert class_sample_counts("balanced", 7, 3) == [3, 2, 2]
    # 10 * [30, 10, 3] / 43 = 6.98, 2.33, 0.70 -> floors 6, 2, 0; 2 left to the largest remainders.
    assert class_sample_counts("train", 10, 3, [30, 10, 3]) == [7, 2, 1]
    assert class_sample_counts("2,0", 5, 3) == [2, 0, 3]  # remainder to the class listed first
    assert plan_labels("balanced", 4, 3) == [0, 0, 1, 2]
    assert sum(apportion(1000, [5, 0, 7, 1])) == 1000
    with pytest.raises(CbdmError, match="out of range"):
        class_sample_counts("0,3", 5, 3)
    with pytest.raises(CbdmError, match="positive"):
        class_sample_counts("balanced", 0, 3)
    with pytest.raises(CbdmError, match="not a class index"):
        class_sample_counts("bogus", 5, 3)


# -- end to end ------------------------------------------------------------------------------

def test_balanced_default_out(runs):
    res = _ok(runs["run"], "--num", 7, "--shard-size", 4, "--batch-size", 3, *FAST)
    out = runs["run"] / "samples-ddim-5-w0"
    assert sorted(p.name for p in out.glob("shard-*.npz")) == ["shard-00000.npz", "shard-00001.npz"]
    assert (out / "grid.png").stat().st_size > 0
    m = _manifest(out)
    assert m["complete"] and m["counts_per_class"] == [3, 2, 2] and m["class_names"] == ["a", "b", "c"]
    assert m["settings"]["step"] == 0 and m["settings"]["sampler"] == "ddim" and m["settings"]["steps"] == 5
    assert [s["count"] for s in m["shards"]] == [4, 3]
    images, labels = load_samples(out)
    assert images.shape == (7, 8, 8, 1) and images.dtype == np.uint8
    assert labels.tolist() == [0, 0, 0, 1, 1, 2, 2] and labels.dtype == np.int64
    assert "7 images" in res.stdout


@pytest.mark.parametrize("classes, counts", [("train", [7, 2, 1]), ("2,0", [2, 0, 3])])
def test_class_choices(runs, tmp_path, classes, counts):
    ckpt = runs["run"] / "checkpoints" / "ckpt-00000000.safetensors"
    _ok(ckpt, "--num", sum(counts), "--classes", classes, "--out", tmp_path / "s", *FAST)
    m = _manifest(tmp_path / "s")
    assert m["counts_per_class"] == counts and m["classes"] == classes
    _, labels = load_samples(tmp_path / "s")
    assert np.bincount(labels, minlength=3).tolist() == counts
    assert labels.tolist() == sorted(labels.tolist())


def test_same_images_whatever_the_batch_size(runs, tmp_path):
    # eta > 0 so the per-step noise (not only x_T) must follow the per-sample generators.
    common = [runs["run"], "--num", 9, "--eta", 0.5, "--seed", 3, *FAST]
    _ok(*common, "--batch-size", 4, "--out", tmp_path / "a")
    _ok(*common, "--batch-size", 7, "--out", tmp_path / "b")
    a, b = load_samples(tmp_path / "a"), load_samples(tmp_path / "b")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].std() > 0


def test_resume_makes_only_missing_shards(runs, tmp_path):
    out = tmp_path / "s"
    args = [runs["run"], "--num", 8, "--shard-size", 4, "--eta", 0.3, "--out", out, *FAST]
    _ok(*args)
    fresh = load_samples(out)
    first = out / "shard-00000.npz"
    mtime = first.stat().st_mtime_ns
    (out / "shard-00001.npz").unlink()
    res = _ok(*args, "--batch-size", 3)  # the batch size may change on resume
    assert "1 written, 1 kept" in res.stdout and "resuming: 4 of 8" in res.output
    assert first.stat().st_mtime_ns == mtime
    again = load_samples(out)
    np.testing.assert_array_equal(fresh[0], again[0])
    np.testing.assert_array_equal(fresh[1], again[1])


def test_other_settings_need_new_out_or_overwrite(runs, tmp_path):
    out = tmp_path / "s"
    _ok(runs["run"], "--num", 3, "--out", out, *FAST)
    res = _invoke(runs["run"], "--num", 3, "--seed", 1, "--out", out, *FAST)
    assert res.exit_code != 0 and "seed: 0 -> 1" in res.output and "--overwrite" in res.output
    assert "Traceback" not in res.output
    _ok(runs["run"], "--num", 3, "--seed", 1, "--out", out, "--overwrite", *FAST)
    assert _manifest(out)["settings"]["seed"] == 1


def test_shard_not_matching_plan_is_an_error(runs, tmp_path):
    out = tmp_path / "s"
    _ok(runs["run"], "--num", 3, "--out", out, *FAST)
    images, labels = read_shard(out / "shard-00000.npz")
    with open(out / "shard-00000.npz", "wb") as f:
        np.savez(f, images=images, labels=labels[::-1].copy())
    res = _invoke(runs["run"], "--num", 3, "--out", out, *FAST)
    assert res.exit_code != 0 and "does not match" in res.output


# -- warnings and errors ---------------------------------------------------------------------

def test_guidance_without_label_dropout_warns(runs, tmp_path):
    res = _ok(runs["nodrop"], "--num", 3, "--guidance", 1.0, "--out", tmp_path / "s", *FAST)
    assert "without label dropout" in res.stderr


def test_disk_space_warning(runs, tmp_path, monkeypatch):
    import shutil

    import cbdm_cli.sample_cmd as cmd

    monkeypatch.setattr(cmd.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 0))
    res = _ok(runs["run"], "--num", 3, "--out", tmp_path / "s", *FAST)
    assert "free" in res.stderr


def test_sampler_options_reach_the_sampler(runs, tmp_path):
    plain = tmp_path / "plain"
    churn = tmp_path / "churn"
    _ok(runs["run"], "--num", 3, "--sampler", "heun", "--out", plain, *FAST)
    _ok(runs["run"], "--num", 3, "--sampler", "heun", "-S", "S_churn=40", "-S", "S_noise=1.007", "--out", churn, *FAST)
    assert _manifest(churn)["settings"]["sampler_options"] == {"S_churn": 40, "S_noise": 1.007}
    assert not np.array_equal(read_shard(plain / "shard-00000.npz")[0], read_shard(churn / "shard-00000.npz")[0])


@pytest.mark.parametrize("extra, message", [
    (["--classes", "0,5"], "class index 5 is out of range"),
    (["--steps", "60"], "steps must be <= T"),
    (["--sampler", "ddpm", "--steps", "10"], "all T=50 steps"),
    (["--sampler", "nope"], "unknown sampler 'nope'"),
    (["--num", "0"], "--num must be positive"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--spacing", "odd"], "spacing"),
    (["--sampler", "heun", "-S", "S_churn=-1"], "invalid option S_churn of sampler 'heun': Input should be greater than or equal to 0"),
    (["-S", "nonsense"], "--sampler-option expects KEY=VALUE"),
    (["--sampler", "heun", "-S", "bogus=1"], "bogus"),
])
def test_user_errors(runs, tmp_path, extra, message):
    res = _invoke(runs["run"], "--out", tmp_path / "s", "--no-progress", "--device", "cpu", *extra)
    assert res.exit_code != 0
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "s").exists()  # checked before anything is written


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "ckpt-00000001.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    res = _invoke(bad, "--no-progress", "--device", "cpu")
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1 and "safetensors" in res.output


def test_unconditional_model_samples_with_null_label(tmp_path):
    from cbdm_core.build import build_model
    from cbdm_core.checkpoint import Checkpoint, save_checkpoint
    from cbdm_core.config import TrainConfig

    cfg = TrainConfig.model_validate({"model": {"options": {"ch": 8, "ch_mult": [1, 2], "attn": [1],
                                                            "num_res_blocks": 1, "num_groups": 4}},
                                      "diffusion": {"T": 50}})
    model = build_model(cfg, image_size=8, channels=1, num_classes=0)
    sd = model.state_dict()
    save_checkpoint(tmp_path / "run" / "checkpoints" / "ckpt-00000000.safetensors",
                    Checkpoint(0, cfg.model_dump(mode="json"), sd, {k: v.clone() for k, v in sd.items()},
                               meta={"num_classes": 0, "image_size": 8, "channels": 1, "class_counts": [],
                                     "class_names": [], "cond_dim": 0}))
    runner = CliRunner()
    res = runner.invoke(cli, ["sample", str(tmp_path / "run"), "--num", "5", "--steps", "3", "--no-progress",
                              "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["counts_per_class"] == [5] and manifest["class_names"] == ["unconditional"]
    res = runner.invoke(cli, ["sample", str(tmp_path / "run"), "--num", "5", "--steps", "3", "--guidance", "1",
                              "--out", str(tmp_path / "s2"), "--no-progress"])
    assert res.exit_code != 0 and "unconditional" in res.output


def test_num_samples_is_another_name_of_num_wherever_num_counts_images():
    """``--num-samples`` (what click suggested ``--sampler`` for) is accepted wherever ``--num`` is."""
    import click

    from cbdm_cli.main import cli

    found = []

    ctx = click.Context(cli)

    def walk(cmd, path=()):
        # list_commands/get_command: the group loads its sub-commands lazily.
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), path + (name,))
        for p in getattr(cmd, "params", []):
            if isinstance(p, click.Option) and "--num" in p.opts:
                assert "--num-samples" in p.opts and p.name == "num", path
                found.append(path)

    walk(cli)
    assert ("sample",) in found and ("eval", "downstream") in found and ("sweep", "option") in found
