"""Dropout for the project's networks, with a cheaper mask on the CPU (``perf.dropout_masks``).

torch's CPU dropout draws its mask with ``bernoulli_``: one call of the generator per
element, on one thread whatever the thread count (about 30 ms for 4M elements on a Zen 4 core,
against under 3 ms for the multiply the mask feeds; docs/benchmarks.md, issue 29). ``words``
masks draw one 64-bit random word per four elements and keep an element when its 16-bit piece
is below ``keep * 2**16``: an i.i.d. Bernoulli(1 - p) mask like torch's, with p rounded to a
multiple of 2**-16 (0.1 becomes 6554 / 65536 = 0.1000061), and the kept values scaled by the
reciprocal of the rounded keep probability, so that the expected output is the input. It is
another random stream than torch's: the same seed draws other masks.

Where rounding would move p by more than 0.1% of p or of 1 - p (it can below p = 0.0077 and
above 0.9923), the layer uses torch's mask. CUDA always uses torch's (a fused kernel there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MASK_KINDS: tuple[str, ...] = ("torch", "words")

_UNITS = 1 << 16  # one 16-bit piece of a random word
_MOST_NEGATIVE_INT64 = -(1 << 63)


def kept_units(p: float) -> int:
    """How many of the 2**16 values of a 16-bit piece keep an element (``round((1 - p) * 2**16)``)."""
    return round((1.0 - p) * _UNITS)


def word_masks_apply(p: float) -> bool:
    """Whether rounding p to 16 bits moves it by at most 0.1% of the smaller of p and 1 - p."""
    if not 0.0 < p < 1.0:
        return False
    rounded = 1.0 - kept_units(p) / _UNITS
    return abs(rounded - p) <= 1e-3 * min(p, 1.0 - p)


def _dense_layout(x: torch.Tensor) -> bool:
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def word_keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """A dropout mask for ``x`` from 64-bit random words: 0 where dropped, ``1 / keep`` where kept.

    Same shape, dtype, device and memory layout (NCHW or NHWC) as ``x``. ``keep`` is the
    keep probability rounded to 16 bits (:func:`kept_units`).
    """
    n = x.numel()
    keep = kept_units(p)
    # The full 64-bit range: random_() without bounds leaves an int64's sign bit 0.
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(_MOST_NEGATIVE_INT64, None)
    pieces = words.view(torch.int16)[:n]
    layout = x if _dense_layout(x) else x.contiguous()
    pieces = pieces.as_strided(layout.shape, layout.stride())
    mask = torch.empty_like(layout)
    torch.lt(pieces, keep - _UNITS // 2, out=mask)  # int16 pieces are uniform on [-2**15, 2**15)
    return mask.mul_(_UNITS / keep)


def dropout(x: torch.Tensor, p: float, training: bool, masks: str = "torch") -> torch.Tensor:
    """``F.dropout(x, p, training)``, drawing the mask as ``masks`` says on the CPU."""
    if not training or p == 0.0:
        return x
    if masks == "words" and x.device.type == "cpu" and word_masks_apply(p):
        return x * word_keep_mask(x, p)
    return F.dropout(x, p, training)


class Dropout(nn.Module):
    """``nn.Dropout`` whose mask kind the trainer chooses (:func:`use_dropout_masks`).

    Built with torch's masks, so a network made outside the trainer behaves as ``nn.Dropout``;
    no parameters or buffers, so checkpoints do not change.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = float(p)
        self.masks: str = "torch"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.masks)

    def extra_repr(self) -> str:
        return f"p={self.p}, masks={self.masks}"


def use_dropout_masks(model: nn.Module, masks: str) -> int:
    """Set the mask kind of every :class:`Dropout` in ``model``; returns how many there are."""
    if masks not in MASK_KINDS:
        raise ValueError(f"unknown dropout mask kind {masks!r}; expected one of {', '.join(MASK_KINDS)}")
    layers = [m for m in model.modules() if isinstance(m, Dropout)]
    for layer in layers:
        layer.masks = masks
    return len(layers)
