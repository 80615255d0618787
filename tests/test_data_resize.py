"""The data config's `resize` (any dataset, every path that loads the data) and mnist-lt-small."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cbdm_core.data import DatasetOptions, load_dataset
from cbdm_core.data.common import resize_images
from cbdm_core.data.mnist import load_mnist_lt_small
from cbdm_core.evaluation.reference import load_reference
from cbdm_core.experiments.protocol import parse_protocol, train_config


def test_shrinking_by_an_integer_factor_is_the_block_mean() -> None:
    x = torch.randint(0, 256, (3, 2, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = resize_images(x, 4)
    want = x.double().reshape(3, 2, 4, 2, 4, 2).mean(dim=(3, 5)).round().to(torch.uint8)
    assert out.dtype == torch.uint8 and out.shape == (3, 2, 4, 4)
    assert (out.int() - want.int()).abs().max() <= 1  # float rounding of exact halves only
    assert torch.equal(resize_images(torch.full((1, 1, 6, 6), 200, dtype=torch.uint8), 12),
                       torch.full((1, 1, 12, 12), 200, dtype=torch.uint8))  # growing keeps a flat image flat


def test_resize_applies_after_the_long_tail_and_is_recorded() -> None:
    plain = load_dataset("digits-lt", DatasetOptions(imb_factor=0.03))
    small = load_dataset("digits-lt", DatasetOptions(imb_factor=0.03, resize=4))
    assert small.images.shape[1:] == (1, 4, 4) and torch.equal(small.labels, plain.labels)
    assert torch.equal(small.images, resize_images(plain.images, 4))
    assert small.info["resize"] == 4 and small.info["resized_from"] == [8, 8]
    with pytest.raises(ValueError):
        DatasetOptions(resize=0)


def _write_idx(path: Path, arr: np.ndarray, magic: int) -> None:
    """An uncompressed idx file (big-endian magic and dimensions, then uint8 data)."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def _fake_mnist(root: Path, per_class: int = 160) -> Path:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), per_class)
    for split, n in (("train", len(labels)), ("t10k", 30)):
        lab = labels if split == "train" else np.arange(n) % 10
        _write_idx(root / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (len(lab), 28, 28)), 2051)
        _write_idx(root / f"{split}-labels-idx1-ubyte", lab, 2049)
    return root


def test_mnist_lt_small_has_digits_lt_tail_at_16x16(tmp_path: Path) -> None:
    root = _fake_mnist(tmp_path)
    digits = load_dataset("digits-lt", DatasetOptions(imb_factor=0.03))
    ds = load_dataset("mnist-lt-small", DatasetOptions(root=root))
    assert ds.name == "mnist-lt-small" and ds.images.shape[1:] == (1, 16, 16)
    assert ds.info["lt_counts"] == digits.info["lt_counts"]  # the same profile as digits-lt
    assert ds.class_counts.tolist() == digits.info["lt_counts"]
    # The cap belongs to the long tail: the evaluation reference and the classifier pool get all of MNIST.
    full = load_mnist_lt_small(DatasetOptions(root=root, imb_factor=1.0))
    assert full.class_counts.tolist() == [160] * 10 and full.images.shape[1:] == (1, 16, 16)
    ref = load_reference("mnist-lt-small", root, "test")
    assert ref.images.shape[1:] == (1, 16, 16)


def test_protocol_data_fields_reach_the_training_config() -> None:
    proto = parse_protocol({
        "data": {"dataset": "digits-lt", "imb_factor": 0.1, "max_per_class": 50, "lt_profile": "step",
                 "lt_seed": 3, "resize": 4},
        "methods": [{"method": "ddpm"}], "seeds": [0],
        "sampling": {"num": 10}, "guidance": {"fixed": 0.0},
        "evaluation": {"metrics": ["fid"]}, "primary": ["fid"]})
    d = train_config(proto, proto.methods[0], 0).data
    assert (d.max_per_class, d.lt_profile, d.lt_seed, d.resize) == (50, "step", 3, 4)
    from cbdm_core.build import dataset_options, load_training_data

    assert dataset_options(train_config(proto, proto.methods[0], 0)).resize == 4
    assert load_training_data(train_config(proto, proto.methods[0], 0)).images.shape[-1] == 4


def test_reference_follows_the_training_resize() -> None:
    assert load_reference("digits", None, "train", image_size=4).images.shape[-2:] == (4, 4)
    assert load_reference("digits", None, "train").images.shape[-2:] == (8, 8)
