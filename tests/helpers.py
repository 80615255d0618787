"""Small models shared by the tests."""

from __future__ import annotations

import torch
from torch import nn

from cbdm_core.nets.unet import UNet, UNetOptions


def tiny_unet(num_classes: int = 3, channels: int = 1, image_size: int = 8, dropout: float = 0.0) -> UNet:
    torch.manual_seed(0)
    opts = UNetOptions(ch=8, ch_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=dropout, num_groups=4)
    return UNet(opts, image_size=image_size, channels=channels, num_classes=num_classes)


class LinearDenoiser(nn.Module):
    """eps = a * x + b[y] + c * t: simple enough to check gradients by hand."""

    def __init__(self, num_classes: int = 3, dim: int = 4):
        super().__init__()
        self.num_classes = num_classes
        self.a = nn.Parameter(torch.tensor(0.5))
        self.b = nn.Parameter(torch.randn(num_classes + 1, 1, 2, 2) * 0.3)
        self.calls: list[int] = []

    def forward(self, x, t, y):
        self.calls.append(x.shape[0])
        return self.a * x + self.b[y] + 1e-3 * t.float().view(-1, 1, 1, 1)
