"""Batched, on-device image augmentations for diffusion training.

Every augmentation is ``aug(x, generator) -> (x_aug, cond)`` with ``x`` float
``[B, C, H, W]`` in ``[-1, 1]``; ``cond`` is ``[B, aug.cond_dim]`` describing what was
applied (``None`` when ``cond_dim == 0``). Random numbers are drawn on the generator's
device in a fixed order, so a seeded generator gives the same result whatever ``p`` masks.
"""

from __future__ import annotations

import math
from typing import Optional, Protocol

import torch
import torch.nn.functional as F

from ..errors import CbdmError


class Augmentation(Protocol):
    """What the trainer calls on every batch."""

    cond_dim: int

    def __call__(
        self, x: torch.Tensor, generator: Optional[torch.Generator]
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]: ...


def _check_p(p: float, name: str) -> float:
    p = float(p)
    if not (0.0 <= p <= 1.0):
        raise CbdmError(f"augmentation {name}: probability p must be in [0, 1], got {p}")
    return p


def _gen_device(generator: Optional[torch.Generator]) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _rand(shape: tuple[int, ...], generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    # Drawn where the generator lives: a CPU generator then gives the same numbers for a CUDA batch.
    return torch.rand(shape, generator=generator, device=_gen_device(generator)).to(device)


def _randn(shape: tuple[int, ...], generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=_gen_device(generator)).to(device)


def _randint(low: int, high: int, shape: tuple[int, ...], generator: Optional[torch.Generator],
             device: torch.device) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=generator, device=_gen_device(generator)).to(device)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image select: ``mask`` is ``[B]`` bool."""
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


def _reflect(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror out-of-range indices back into ``0..size-1`` (edge pixel not repeated)."""
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= size, period - idx, idx)


def shift_images(x: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Move image ``b`` right by ``tx[b]`` and down by ``ty[b]`` whole pixels.

    ``padding``: ``zeros`` fills uncovered pixels with 0, ``reflect`` mirrors the image.
    """
    b, _, h, w = x.shape
    ys = torch.arange(h, device=x.device).view(1, h) - ty.view(b, 1).long()
    xs = torch.arange(w, device=x.device).view(1, w) - tx.view(b, 1).long()
    if padding == "reflect":
        ys, xs = _reflect(ys, h), _reflect(xs, w)
        valid = None
    else:
        valid = ((ys >= 0) & (ys < h)).view(b, 1, h, 1) & ((xs >= 0) & (xs < w)).view(b, 1, 1, w)
        ys, xs = ys.clamp(0, h - 1), xs.clamp(0, w - 1)
    bi = torch.arange(b, device=x.device).view(b, 1, 1)
    # Advanced indices split by a slice put the broadcast dims first: [B, H, W, C].
    out = x[bi, :, ys.view(b, h, 1), xs.view(b, 1, w)].permute(0, 3, 1, 2)
    if valid is not None:
        out = out * valid.to(out.dtype)
    return out.contiguous()


class NoAugment:
    """Identity (``p`` is ignored)."""

    cond_dim = 0

    def __init__(self, p: float = 0.0) -> None:
        _check_p(p, "none")

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, None]:
        return x, None


class RandomFlip:
    """Horizontal flip of each image with probability 0.5 (``p`` is ignored)."""

    cond_dim = 0

    def __init__(self, p: float = 0.5) -> None:
        _check_p(p, "flip")

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, None]:
        flip = _rand((x.shape[0],), generator, x.device) < 0.5
        return _where(flip, x.flip(-1), x), None


class DiffAugment:
    """DiffAugment (Zhao et al. 2020): colour (brightness, saturation, contrast), translation by
    up to 1/8 of the size with zero padding, cutout of half the size.

    Each of the five transforms is applied to each image independently with probability ``p``.
    Values are not clipped back to ``[-1, 1]`` (as in the original).
    """

    cond_dim = 0

    def __init__(self, p: float = 0.5, translation_ratio: float = 0.125, cutout_ratio: float = 0.5) -> None:
        self.p = _check_p(p, "diffaug")
        self.translation_ratio = translation_ratio
        self.cutout_ratio = cutout_ratio

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, None]:
        b, _, h, w = x.shape
        dev = x.device
        apply = _rand((b, 5), generator, dev) < self.p
        mag = _rand((b, 3), generator, dev).to(x.dtype)
        sx, sy = int(w * self.translation_ratio + 0.5), int(h * self.translation_ratio + 0.5)
        tx = _randint(-sx, sx + 1, (b,), generator, dev)
        ty = _randint(-sy, sy + 1, (b,), generator, dev)
        ch, cw = int(h * self.cutout_ratio + 0.5), int(w * self.cutout_ratio + 0.5)
        cy = _randint(0, h + (1 - ch % 2), (b,), generator, dev)
        cx = _randint(0, w + (1 - cw % 2), (b,), generator, dev)

        # brightness: add U(-0.5, 0.5)
        x = _where(apply[:, 0], x + (mag[:, 0] - 0.5).view(b, 1, 1, 1), x)
        # saturation: scale the distance to the per-pixel channel mean by U(0, 2)
        mean = x.mean(dim=1, keepdim=True)
        x = _where(apply[:, 1], (x - mean) * (2 * mag[:, 1]).view(b, 1, 1, 1) + mean, x)
        # contrast: scale the distance to the image mean by U(0.5, 1.5)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = _where(apply[:, 2], (x - mean) * (mag[:, 2] + 0.5).view(b, 1, 1, 1) + mean, x)
        # translation with zero padding
        x = _where(apply[:, 3], shift_images(x, tx, ty, "zeros"), x)
        # cutout: a zeroed ch x cw square centred anywhere (it may hang over the border)
        top, left = cy - ch // 2, cx - cw // 2
        rows = torch.arange(h, device=dev).view(1, h)
        cols = torch.arange(w, device=dev).view(1, w)
        in_r = (rows >= top.view(b, 1)) & (rows < (top + ch).view(b, 1))
        in_c = (cols >= left.view(b, 1)) & (cols < (left + cw).view(b, 1))
        hole = (in_r.view(b, 1, h, 1) & in_c.view(b, 1, 1, w)) & apply[:, 4].view(b, 1, 1, 1)
        x = x.masked_fill(hole, 0.0)
        return x, None


class NonLeakingAugment:
    """EDM-style non-leaking augmentation: the network is conditioned on what was applied,
    so sampling with a zero condition gives un-augmented images.

    Per image, each with probability ``p``: x-flip, 90-degree rotation (k = 1, 2 or 3; square
    images only), integer translation by up to 1/8 of the size (never (0, 0); reflect padding),
    isotropic scaling (``log2 s ~ N(0, 0.2^2)``; bilinear, reflect padding). Applied in that order.

    ``cond`` (``cond_dim = 9``, all zeros when nothing is applied):
    ``[flip, tx / W, ty / H, cos(rot) - 1, sin(rot), log2(scale),
    translated, rotated, scaled]`` (the last three are 0/1 flags).
    """

    cond_dim = 9
    scale_std = 0.2
    translate_ratio = 0.125

    def __init__(self, p: float = 0.2) -> None:
        self.p = _check_p(p, "ada")

    def __call__(
        self, x: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = x.shape
        dev = x.device
        apply = _rand((b, 4), generator, dev) < self.p
        k = _randint(1, 4, (b,), generator, dev)
        s = max(1, int(min(h, w) * self.translate_ratio + 0.5))
        side = 2 * s + 1
        pick = _randint(0, side * side - 1, (b,), generator, dev)
        pick = pick + (pick >= (side * side) // 2).long()  # skip the centre cell = no move
        tx, ty = pick % side - s, pick // side - s
        log2s = _randn((b,), generator, dev) * self.scale_std

        flip, rot, trans, scale = apply.unbind(1)
        if h != w:
            rot = torch.zeros_like(rot)  # a 90-degree turn would change the shape
        x = _where(flip, x.flip(-1), x)
        for kk in (1, 2, 3):
            m = rot & (k == kk)
            if bool(m.any()):
                x = _where(m, torch.rot90(x, kk, dims=(2, 3)), x)
        if bool(trans.any()):
            x = _where(trans, shift_images(x, tx, ty, "reflect"), x)
        if bool(scale.any()):
            idx = scale.nonzero().squeeze(1)
            inv = torch.exp2(-log2s[idx]).to(x.dtype)
            theta = torch.zeros(len(idx), 2, 3, device=dev, dtype=x.dtype)
            theta[:, 0, 0] = inv
            theta[:, 1, 1] = inv
            grid = F.affine_grid(theta, [len(idx), x.shape[1], h, w], align_corners=False)
            scaled = F.grid_sample(x[idx], grid, mode="bilinear", padding_mode="reflection", align_corners=False)
            x = x.index_copy(0, idx, scaled)

        angle = k.to(x.dtype) * (math.pi / 2)
        f = lambda m: m.to(x.dtype)  # noqa: E731 - bool flags as 0/1
        cond = torch.stack([
            f(flip),
            f(trans) * tx.to(x.dtype) / w,
            f(trans) * ty.to(x.dtype) / h,
            f(rot) * (torch.cos(angle) - 1),
            f(rot) * torch.sin(angle),
            f(scale) * log2s.to(x.dtype),
            f(trans), f(rot), f(scale),
        ], dim=1)
        # cos/sin of multiples of pi/2 are off by ~1e-8 in float32: snap them.
        cond[:, 3:5] = torch.round(cond[:, 3:5])
        return x, cond
