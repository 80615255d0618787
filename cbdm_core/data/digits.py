"""The embedded default dataset: scikit-learn's 8x8 handwritten digits (1,797 images, no download)."""

from __future__ import annotations

import numpy as np
import torch

from ..interfaces import LabeledImages
from .common import finish
from .options import DatasetOptions

# digits has only ~145 train images per class: 0.01 would leave one image in the tail class.
DIGITS_LT_DEFAULT = 0.1
TEST_EVERY = 5  # the 5th, 10th, ... image of each class goes to the test split


def load_digits(options: DatasetOptions | None = None, *, long_tail: bool = False) -> LabeledImages:
    """sklearn digits as uint8 ``[N, 1, 8, 8]`` (0..16 scaled to 0..255).

    The split is deterministic: every 5th image of each class (in sklearn's order) is test.
    ``long_tail=True`` (``digits-lt``) defaults to ``imb_factor=0.1`` on the train split.
    """
    from sklearn.datasets import load_digits as _sk_load_digits  # heavy import, only when used

    options = options or DatasetOptions()
    bunch = _sk_load_digits()
    data = np.asarray(bunch.images, dtype=np.float64)
    target = np.asarray(bunch.target, dtype=np.int64)
    # Position of each image within its class decides the split.
    rank = np.zeros_like(target)
    for c in np.unique(target):
        where = np.flatnonzero(target == c)
        rank[where] = np.arange(len(where))
    is_test = rank % TEST_EVERY == TEST_EVERY - 1
    mask = is_test if options.split == "test" else ~is_test
    images = np.rint(data[mask] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    name = "digits-lt" if long_tail else "digits"
    return finish(
        torch.from_numpy(images),
        torch.from_numpy(target[mask]),
        [str(c) for c in range(10)],
        name,
        options,
        DIGITS_LT_DEFAULT if long_tail else 1.0,
        {"source": "sklearn.datasets.load_digits"},
    )
