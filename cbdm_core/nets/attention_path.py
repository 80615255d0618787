"""Which attention kernel a CPU forward takes, by its precision (measured: docs/benchmarks.md, issue 29).

On the CPU, ``scaled_dot_product_attention`` is the fastest path in fp32, but not in bf16: with
gradients its math path upcasts bf16 to fp32 and its fused kernel is slower still, and even without
gradients timm's two explicit matmuls beat it. So bf16 CPU passes use plain matmuls.
"""

from __future__ import annotations

import torch
from torch import nn


def cpu_low_precision(x: torch.Tensor) -> bool:
    """Whether this CPU forward runs its matmuls in bf16 (autocast, or a bf16 copy of the weights)."""
    return x.device.type == "cpu" and (torch.is_autocast_enabled("cpu") or x.dtype == torch.bfloat16)


def pick_timm_attention(attn: nn.Module, x: torch.Tensor) -> None:
    """Set a timm ``Attention``'s ``fused_attn`` for the pass about to run on ``x``.

    timm's own choice (``use_fused_attn()``, which honours ``TIMM_FUSED_ATTN``) everywhere but bf16 on
    the CPU, where timm's explicit ``q @ k^T``, softmax, ``@ v`` trains the ViT backbones 1.2-1.7x and
    samples them 1.1x faster (docs/benchmarks.md, "bf16 attention").
    """
    from timm.layers import use_fused_attn

    attn.fused_attn = use_fused_attn() and not cpu_low_precision(x)
