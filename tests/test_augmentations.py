"""Batched augmentations: shapes, determinism, identity at p=0, conditioning."""

from __future__ import annotations

import pytest
import torch

from cbdm_core.data.augment import NonLeakingAugment, shift_images
from cbdm_core.errors import CbdmError
from cbdm_core.registry import build_registry

NAMES = ["none", "flip", "diffaug", "ada"]


@pytest.fixture(scope="module")
def factories() -> dict:
    reg = build_registry()
    return {n: reg.get("augmentation", n).obj for n in NAMES}


def _batch(b: int = 16, c: int = 3, s: int = 16) -> torch.Tensor:
    return torch.rand(b, c, s, s, generator=torch.Generator().manual_seed(123)) * 2 - 1


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_determinism(factories: dict, name: str) -> None:
    aug = factories[name](0.5)
    x = _batch()
    y1, c1 = aug(x, _gen(7))
    y2, c2 = aug(x, _gen(7))
    assert y1.shape == x.shape and y1.dtype == x.dtype
    assert torch.equal(y1, y2)
    if aug.cond_dim == 0:
        assert c1 is None and c2 is None
    else:
        assert c1.shape == (16, aug.cond_dim) and torch.equal(c1, c2)


@pytest.mark.parametrize("name", ["diffaug", "ada"])
def test_p_zero_is_identity(factories: dict, name: str) -> None:
    aug = factories[name](0.0)
    x = _batch()
    y, cond = aug(x, _gen(1))
    assert torch.equal(y, x)
    if aug.cond_dim:
        assert torch.count_nonzero(cond) == 0


def test_invalid_p(factories: dict) -> None:
    for name in NAMES:
        with pytest.raises(CbdmError, match="p must be in"):
            factories[name](1.5)


def test_flip_flips_about_half(factories: dict) -> None:
    x = _batch(b=64)
    y, _ = factories["flip"](0.0)(x, _gen(3))  # p is ignored
    flipped = torch.tensor([torch.equal(y[i], x[i].flip(-1)) for i in range(64)])
    kept = torch.tensor([torch.equal(y[i], x[i]) for i in range(64)])
    assert bool((flipped | kept).all())
    assert 16 <= int(flipped.sum()) <= 48


def test_diffaug_p_one_changes_every_image(factories: dict) -> None:
    x = _batch()
    y, _ = factories["diffaug"](1.0)(x, _gen(2))
    assert all(not torch.equal(y[i], x[i]) for i in range(len(x)))
    # Cutout of half the size zeroes at least a quarter-hanging square somewhere.
    assert bool(((y == 0).flatten(1).sum(1) > 0).all())


def test_shift_images_padding() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4) + 1
    right = shift_images(x, torch.tensor([1]), torch.tensor([0]), "zeros")
    assert torch.equal(right[..., 1:], x[..., :-1]) and bool((right[..., 0] == 0).all())
    down = shift_images(x, torch.tensor([0]), torch.tensor([-1]), "reflect")
    assert torch.equal(down[..., :-1, :], x[..., 1:, :]) and torch.equal(down[..., -1, :], x[..., -2, :])


def test_ada_cond_nonzero_iff_applied() -> None:
    aug = NonLeakingAugment(0.5)
    assert aug.cond_dim == 9
    x = _batch(b=256, s=8)
    y, cond = aug(x, _gen(11))
    flags = torch.stack([cond[:, 0], cond[:, 6], cond[:, 7], cond[:, 8]], 1)
    applied = flags.bool().any(1)
    assert torch.equal(cond.ne(0).any(1), applied)
    assert bool(((flags == 0) | (flags == 1)).all())
    # Nothing applied -> image untouched.
    for i in torch.nonzero(~applied).flatten().tolist():
        assert torch.equal(y[i], x[i])
    # Only one op applied -> exactly that op.
    only = lambda col: (flags[:, col] == 1) & (flags.sum(1) == 1)  # noqa: E731
    for i in torch.nonzero(only(0)).flatten().tolist():
        assert torch.equal(y[i], x[i].flip(-1))
    for i in torch.nonzero(only(2)).flatten().tolist():
        k = {(-1.0, 1.0): 1, (-2.0, 0.0): 2, (-1.0, -1.0): 3}[(float(cond[i, 3]), float(cond[i, 4]))]
        assert torch.equal(y[i], torch.rot90(x[i], k, dims=(1, 2)))
    for i in torch.nonzero(only(1)).flatten().tolist():
        tx, ty = round(float(cond[i, 1]) * 8), round(float(cond[i, 2]) * 8)
        assert (tx, ty) != (0, 0)
        assert torch.equal(y[i], shift_images(x[i:i + 1], torch.tensor([tx]), torch.tensor([ty]), "reflect")[0])
    assert bool(only(3).any()) and bool((cond[only(3), 5] != 0).all())
    # p = 1: every op on every image.
    _, full = NonLeakingAugment(1.0)(x, _gen(12))
    assert bool((full[:, [0, 6, 7, 8]] == 1).all())


def test_ada_keeps_dtype() -> None:
    x = _batch(b=4, s=8).double()
    y, cond = NonLeakingAugment(1.0)(x, _gen(5))
    assert y.dtype == torch.float64 and cond.dtype == torch.float64
