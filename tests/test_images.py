"""Sample grids: one row per class, each row labelled at its left."""

from __future__ import annotations

import numpy as np
import torch

from cbdm_core.images import class_rows, grid_image
from cbdm_core.sampling.sample_grid import row_names


def _grid(labels=None):
    images = torch.full((6, 1, 8, 8), 255, dtype=torch.uint8)  # white cells: any ink is a label
    y = torch.arange(3).repeat_interleave(2)
    return np.asarray(grid_image(class_rows(images, y, 3, 2), nrow=2, row_labels=labels))


def test_grid_rows_carry_their_labels():
    plain, labelled = _grid(), _grid(["zero", "one", "two"])
    extra = labelled.shape[1] - plain.shape[1]
    assert labelled.shape[0] == plain.shape[0] and extra > 10
    assert np.array_equal(labelled[:, extra:], plain)  # the images are untouched, shifted right
    row = (plain.shape[0] - 1) // 3  # cell height + padding
    for r in range(3):
        band = labelled[1 + r * row:1 + (r + 1) * row, :extra]
        assert (band < 128).any(), f"row {r} has no label"


def test_row_names_from_the_manifest():
    assert row_names({"class_names": ["cat", "dog"]}, 2) == ["cat", "dog"]
    assert row_names({}, 3) == ["0", "1", "2"]
