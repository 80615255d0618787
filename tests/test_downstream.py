"""Downstream recognition (Table 4) pieces."""

import pytest
import torch

from cbdm_core.data import load_dataset
from cbdm_core.data.options import DatasetOptions
from cbdm_core.experiments.downstream import DownstreamOptions, ResNetCifar, classification_scores, downstream_comparison
from cbdm_core.errors import CbdmError


def test_resnet32_size_and_shapes():
    model = ResNetCifar(100, 3)
    assert 0.46e6 < sum(p.numel() for p in model.parameters()) < 0.48e6  # ResNet-32: 0.46M
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert ResNetCifar(10, 1, blocks_per_stage=1, width=4)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_scores_by_hand():
    s = classification_scores(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 2]), 3)
    assert s["accuracy"] == pytest.approx(0.5)
    # precision: class0 1/2, class1 1/2, class2 0 (never predicted); recall: 1, 1/2, 0
    assert s["macro_precision"] == pytest.approx(1 / 3)
    assert s["macro_recall"] == pytest.approx(0.5)


def test_comparison_on_embedded_digits():
    train = load_dataset("digits-lt", DatasetOptions())
    test = load_dataset("digits", DatasetOptions(split="test"))
    opts = DownstreamOptions(epochs=3, batch_size=64, lr=0.05, blocks_per_stage=1, width=8)
    # "Generated" images: real balanced training images stand in for a perfect generator.
    full = load_dataset("digits", DatasetOptions())
    res = downstream_comparison(train.images, train.labels, test.images, test.labels, 10,
                                [("oracle", full.images, full.labels)], opts)
    assert set(res) == {"real", "real+oracle"}
    assert res["real+oracle"]["train_images"] == len(train) + len(full)
    for scores in res.values():
        assert 0 <= scores["accuracy"] <= 1 and 0 <= scores["macro_recall"] <= 1
    assert res["real+oracle"]["macro_recall"] > res["real"]["macro_recall"]


def test_mismatched_generated_images():
    x = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(CbdmError, match="do not match"):
        downstream_comparison(x, y, x, y, 2, [("g", torch.zeros(4, 3, 8, 8, dtype=torch.uint8), y)])


def test_class_interleaved_subset_is_even():
    from cbdm_core.experiments.downstream import class_interleaved_subset

    labels = torch.tensor([0] * 50 + [1] * 50 + [2] * 5)  # class-sorted, like a sample folder
    idx = class_interleaved_subset(labels, 30, seed=1)
    assert len(set(idx.tolist())) == 30
    assert torch.bincount(labels[idx], minlength=3).tolist() == [13, 12, 5] or \
        torch.bincount(labels[idx], minlength=3).tolist() == [12, 13, 5]
    assert torch.equal(idx, class_interleaved_subset(labels, 30, seed=1))
    with pytest.raises(CbdmError, match="only 105"):
        class_interleaved_subset(labels, 106)


def test_downstream_cli_on_digits(tmp_path):
    import json

    import numpy as np
    from click.testing import CliRunner

    from cbdm_cli.main import cli

    torch.set_num_threads(1)
    full = load_dataset("digits", DatasetOptions())
    nhwc = full.images.permute(0, 2, 3, 1).numpy()
    order = np.argsort(full.labels.numpy(), kind="stable")  # class-sorted like a sample folder
    np.savez(tmp_path / "oracle.npz", images=nhwc[order], labels=full.labels.numpy()[order])
    np.savez(tmp_path / "unlabelled.npz", images=nhwc[:10])
    common = ["eval", "downstream", "--dataset", "digits-lt", "--epochs", "2", "--blocks-per-stage", "1",
              "--width", "8", "--batch-size", "64", "--lr", "0.05", "--device", "cpu"]
    out = tmp_path / "ds.json"
    res = CliRunner().invoke(cli, [*common, f"good={tmp_path / 'oracle.npz'}", "--num", "500", "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    n_train = len(load_dataset("digits-lt", DatasetOptions()))
    assert doc["results"]["real"]["train_images"] == n_train
    assert doc["results"]["real+good"]["train_images"] == n_train + 500
    assert doc["options"]["hflip"] is False  # grayscale digits are not flipped by default
    assert doc["test_images"] == len(load_dataset("digits", DatasetOptions(split="test")))
    # 500 class-balanced real images lift the tail classes, so macro recall rises
    assert doc["results"]["real+good"]["macro_recall"] > doc["results"]["real"]["macro_recall"]
    for bad, match in (([str(tmp_path / "unlabelled.npz")], "no class labels"),
                       ([f"a={tmp_path / 'oracle.npz'}", f"a={tmp_path / 'oracle.npz'}"], "named 'a'"),
                       ([str(tmp_path / "oracle.npz"), "--num", "99999"], "only")):
        res = CliRunner().invoke(cli, [*common, *bad, "--out", str(tmp_path / "x.json")])
        assert res.exit_code == 1 and "Traceback" not in res.output and match in res.output, res.output
