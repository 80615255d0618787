"""`--init-from`: fine-tuning start-up (paper Table 2)."""

import pytest
import torch
import yaml
from click.testing import CliRunner

from cbdm_cli.main import cli
from cbdm_core.checkpoint import list_checkpoints, load_checkpoint
from cbdm_core.errors import CheckpointError
from cbdm_core.training.init_from import init_from_checkpoint

from .helpers import TINY, tiny_unet


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pre")
    (tmp / "c.yaml").write_text(yaml.safe_dump({**TINY, "optim": {**TINY["optim"], "steps": 3}}))
    res = CliRunner().invoke(cli, ["train", "--config", str(tmp / "c.yaml"), "--out", str(tmp / "run"),
                                   "--no-progress", "--method", "ddpm"])
    assert res.exit_code == 0, res.output
    return tmp


def test_finetune_starts_from_pretrained_ema(pretrained, tmp_path):
    src = load_checkpoint(list_checkpoints(pretrained / "run" / "checkpoints")[-1][1])
    cfg = {**TINY, "optim": {**TINY["optim"], "steps": 1, "lr": 1e-12, "warmup": 0}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(cli, ["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "ft"),
                                   "--init-from", str(pretrained / "run"), "--y-dist", "bal", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "initialised from" in res.output
    ft = load_checkpoint(list_checkpoints(tmp_path / "ft" / "checkpoints")[-1][1])
    # One step at a negligible learning rate: weights are the pre-trained EMA weights.
    for k, v in src.ema.items():
        assert torch.allclose(ft.model[k], v, atol=1e-6), k
    assert ft.config["init_from"] == str(pretrained / "run")


def test_new_label_embedding_when_classes_differ(pretrained):
    model = tiny_unet(num_classes=3)
    path = list_checkpoints(pretrained / "run" / "checkpoints")[-1][1]
    # The pre-trained run has 10 classes and an 8-channel U-Net of the same layout.
    fresh = init_from_checkpoint(model, path)
    assert fresh == ["label_embedding.weight"]
    src = load_checkpoint(path).ema
    assert torch.equal(model.state_dict()["head.weight"], src["head.weight"])
    assert torch.count_nonzero(model.label_embedding.weight[3]) == 0


def test_mismatched_architecture_is_refused(pretrained):
    model = tiny_unet(num_classes=10, channels=3)
    with pytest.raises(CheckpointError, match="head.weight"):
        init_from_checkpoint(model, list_checkpoints(pretrained / "run" / "checkpoints")[-1][1])


def test_missing_init_checkpoint_is_one_line(tmp_path):
    res = CliRunner().invoke(cli, ["train", "--init-from", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "nope" in res.output.strip().splitlines()[-1]
