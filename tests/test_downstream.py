"""Downstream recognition (Table 4) pieces."""

import pytest
import torch

from cbdm_core.data import load_dataset
from cbdm_core.data.options import DatasetOptions
from cbdm_core.downstream import DownstreamOptions, ResNetCifar, classification_scores, downstream_comparison
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
