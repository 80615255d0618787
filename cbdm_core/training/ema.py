"""Exponential moving average of model weights."""

from __future__ import annotations

import torch


class EMA:
    """EMA over a model's floating-point parameters and buffers.

    Args:
        model: the trained model.
        shadow: the module holding the averaged weights (same architecture).
        decay: the EMA decay (0.9999 in the paper).
        warmup: use ``min(decay, (1 + n) / (10 + n))`` so short runs are not dominated by the init.
    """

    def __init__(self, model: torch.nn.Module, shadow: torch.nn.Module, decay: float, warmup: bool = False):
        self.decay = decay
        self.warmup = warmup
        self.shadow = shadow
        self._src = [t for t in list(model.parameters()) + list(model.buffers())]
        self._dst = [t for t in list(shadow.parameters()) + list(shadow.buffers())]
        self._float = [i for i, t in enumerate(self._src) if t.is_floating_point()]

    def decay_at(self, num_updates: int) -> float:
        if self.warmup:
            return min(self.decay, (1 + num_updates) / (10 + num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, num_updates: int) -> None:
        d = self.decay_at(num_updates)
        src = [self._src[i].detach() for i in self._float]
        dst = [self._dst[i] for i in self._float]
        # lerp: dst += (1 - d) * (src - dst), in one fused call over all tensors.
        torch._foreach_lerp_(dst, src, 1.0 - d)
