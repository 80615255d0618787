"""`cbdm train` end to end on the embedded dataset, resume, and user errors."""

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cbdm_cli.main import cli
from cbdm_core.checkpoint import list_checkpoints, load_checkpoint

from .helpers import TINY, assert_same_final_checkpoint



@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def _one_line_error(result):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_train_writes_run_folder(tmp_path, tiny_config):
    out = tmp_path / "run"
    res = run("train", "--config", tiny_config, "--out", out, "--no-progress")
    assert res.exit_code == 0, res.output
    ckpts = list_checkpoints(out / "checkpoints")
    assert [s for s, _ in ckpts] == [6]
    ck = load_checkpoint(ckpts[-1][1])
    assert ck.meta.num_classes == 10 and ck.meta.image_size == 8
    assert ck.config["objective"]["methods"][0]["name"] == "cbdm"
    assert (out / "config.yaml").exists()
    assert list((out / "samples").glob("grid-*.png"))
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert {"diffusion", "regularizer", "total", "lr", "images_per_sec", "grad_norm", "time", "elapsed"} <= set(records[0])
    assert "commitment" not in records[0]  # same value as regularizer (docs/training.md)


def test_cli_options_override_config(tmp_path, tiny_config):
    out = tmp_path / "run"
    res = run("train", "--config", tiny_config, "--out", out, "--no-progress", "--y-dist", "sqrt",
              "--tau", "0.002", "--steps", "2", "--set", "model.options.ch=16")
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["objective"]["methods"][0]["options"] == {"y_dist": "sqrt", "tau": 0.002}
    assert saved["optim"]["steps"] == 2 and saved["model"]["options"]["ch"] == 16


def test_method_ddpm_has_no_regularizer(tmp_path, tiny_config):
    out = tmp_path / "run"
    res = run("train", "--config", tiny_config, "--out", out, "--no-progress", "--method", "ddpm", "--steps", "2")
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "regularizer" not in rec


def test_resume_matches_uninterrupted_run(tmp_path, tiny_config):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run("train", "--config", tiny_config, "--out", straight, "--no-progress").exit_code == 0
    res = run("train", "--config", tiny_config, "--out", split, "--no-progress", "--steps", "3")
    assert res.exit_code == 0, res.output
    res = run("train", "--out", split, "--no-progress", "--resume", "--steps", "6")
    assert res.exit_code == 0, res.output
    assert_same_final_checkpoint(straight, split, 6)


def test_existing_run_is_not_overwritten(tmp_path, tiny_config):
    out = tmp_path / "run"
    assert run("train", "--config", tiny_config, "--out", out, "--no-progress", "--steps", "1").exit_code == 0
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    line = _one_line_error(run("train", "--config", tiny_config, "--out", out, "--no-progress"))
    assert "already holds a run" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_resume_refuses_changed_options(tmp_path, tiny_config):
    out = tmp_path / "run"
    assert run("train", "--config", tiny_config, "--out", out, "--no-progress", "--steps", "1").exit_code == 0
    line = _one_line_error(run("train", "--out", out, "--resume", "--tau", "0.5", "--no-progress"))
    assert "--tau" in line


def test_corrupt_checkpoint_on_resume(tmp_path, tiny_config):
    out = tmp_path / "run"
    assert run("train", "--config", tiny_config, "--out", out, "--no-progress", "--steps", "1").exit_code == 0
    ckpt = list_checkpoints(out / "checkpoints")[-1][1]
    ckpt.write_bytes(b"not a checkpoint at all")
    line = _one_line_error(run("train", "--out", out, "--resume", "--steps", "2", "--no-progress"))
    assert "checkpoint" in line


@pytest.mark.parametrize("args, needle", [
    (["--y-dist", "nope"], "unknown label distribution 'nope'; available:"),
    (["--backbone", "resnet9000"], "unknown backbone 'resnet9000'"),
    (["--dataset", "imagenet-2040"], "unknown dataset 'imagenet-2040'"),
    (["--dataset", "imagenet-lt"], "needs --data-root"),  # a real dataset now: its data are missing
    (["--set", "optim.lr=-1"], "optim.lr"),
    (["--set", "optim.typo=1"], "optim.typo: unknown key"),
    (["--set", "model.options.ch_mult=[1,-2]"], "model.options"),
    (["--imb-factor", "1.5"], "data.imb_factor"),
    (["--dataset", "mnist-lt"], "data-root"),
    (["--dataset", "mnist-lt", "--data-root", "/nonexistent/folder"], "/nonexistent/folder"),
])
def test_user_errors_are_one_line(tmp_path, tiny_config, args, needle):
    line = _one_line_error(run("train", "--config", tiny_config, "--out", tmp_path / "r", "--no-progress", *args))
    assert needle in line
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: 1e-4, bogus: 3}\n")
    assert "optim.bogus: unknown key" in _one_line_error(run("train", "--config", bad, "--out", tmp_path / "r"))
    toml = tmp_path / "c.toml"
    toml.write_text("[optim]\nsteps = 'many'\n")
    assert "optim.steps" in _one_line_error(run("train", "--config", toml, "--out", tmp_path / "r"))
    assert "not found" in _one_line_error(run("train", "--config", tmp_path / "missing.json"))


def test_mnist_lt_from_shared_data(tmp_path, tiny_config, shared_data):
    root = shared_data / "mnist"
    if not root.exists():
        pytest.skip(f"MNIST not present at {root}")
    out = tmp_path / "run"
    res = run("train", "--config", tiny_config, "--out", out, "--no-progress", "--dataset", "mnist-lt",
              "--data-root", root, "--steps", "2", "--set", "preview.per_class=1")
    assert res.exit_code == 0, res.output
    ck = load_checkpoint(list_checkpoints(out / "checkpoints")[-1][1])
    assert ck.meta.image_size == 32 and ck.meta.channels == 1
    counts = ck.meta.class_counts
    assert counts[0] > counts[-1] and len(counts) == 10


@pytest.mark.parametrize("augment", ["ada", "diffaug", "flip"])
def test_baselines_augmentation_and_resampling_train(tmp_path, tiny_config, augment):
    out = tmp_path / "run"
    res = run("train", "--config", tiny_config, "--out", out, "--no-progress", "--steps", "2", "--augment", augment,
              "--augment-p", "0.5", "--resample", "sqrt")
    assert res.exit_code == 0, res.output
    from cbdm_core import load_run

    model = load_run(out).model
    # ADA feeds its transform parameters to the network; the others do not.
    assert (model.cond_embedding is not None) == (augment == "ada")


def test_switching_backbone_keeps_or_resets_options(tiny_config):
    from cbdm_cli.train_cmd import build_config

    edm = build_config(tiny_config, None, {"backbone": "edm"}, ())
    assert edm.model.backbone == "edm" and edm.model.options["inner"] == "unet"
    assert edm.model.options["inner_options"] == TINY["model"]["options"]  # the configured U-Net, preconditioned
    vit = build_config(tiny_config, None, {"backbone": "vit"}, ())
    assert vit.model.backbone == "vit" and vit.model.options == {}  # U-Net options do not apply to a ViT
    same = build_config(tiny_config, None, {"backbone": "unet"}, ())
    assert same.model.options == TINY["model"]["options"]
    with pytest.raises(Exception, match="unknown backbone"):
        build_config(tiny_config, None, {"backbone": "resnet9000"}, ())
