"""``classifier: auto``: trained on real images the diffusion model never saw, with a held-out
split whose per-class accuracy the compare report prints as the ceiling of conditional accuracy."""

from __future__ import annotations

import torch

from cbdm_core.data import dataset_options, load_dataset
from cbdm_core.data.common import select_indices
from cbdm_core.features.auto_classifier import _digests, classifier_data, classifier_summary, ensure_classifier


def test_auto_classifier_never_sees_a_diffusion_training_image():
    lt_opts = dataset_options(split="train", imb_factor=0.03)
    data = classifier_data("digits-lt", None, [lt_opts])
    # by index: the LT set is a subset of the train split; none of its indices is a training row
    full = load_dataset("digits", dataset_options(split="train"))
    keep, _ = select_indices(full.labels, 10, lt_opts, 1.0)
    used = {i for split, i in data.sources if split == "train"}
    assert used and not used & set(keep.tolist())
    assert any(split == "test" for split, _ in data.sources)
    # by content: no training or held-out image equals a diffusion training image
    lt = load_dataset("digits-lt", lt_opts)
    assert torch.equal(lt.images, full.images[keep])
    seen = set(_digests(lt.images))
    assert not seen & set(_digests(data.train_images)) and not seen & set(_digests(data.held_images))
    # balanced held-out split, disjoint from training; every remaining image used once
    held = torch.bincount(data.held_labels, minlength=10).tolist()
    assert len(set(held)) == 1 and held[0] == 11  # 30% of the smallest class (35 images of class 0)
    assert len(data.train_labels) + len(data.held_labels) + data.excluded == 1797
    assert torch.bincount(data.train_labels, minlength=10).tolist()[0] == 35 - 11


def test_ensure_classifier_records_held_out_accuracy(tmp_path):
    path = ensure_classifier(tmp_path / "c.safetensors", "digits-lt", None, epochs=1,
                             training_sets=[dataset_options(split="train", imb_factor=0.03)])
    info = classifier_summary(path)
    acc = info["held_out"]["per_class_accuracy"]
    assert len(acc) == 10 and all(0 <= a <= 1 for a in acc)
    assert info["held_out"]["per_class_count"] == [11] * 10
    assert info["data"]["excluded_diffusion_training_images"] >= sum([143, 99, 67, 45, 30, 20, 14, 9, 6, 4])
