"""The DDPM U-Net (Ho et al. 2020) as used by CBDM, with a class embedding added
to the time embedding and a zero embedding for the null label."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn
from torch.nn import init

from ..errors import CbdmError
from .attention_path import cpu_low_precision
from .dropout import Dropout
from .tap import FeatureTap, spatial_mean


class UNetOptions(BaseModel):
    """Architecture options of the U-Net.

    Args:
        ch: base channel count (128 in the paper).
        ch_mult: channel multiplier per resolution level (1, 2, 2, 2 for 32x32).
        attn: levels (indices into ch_mult) with self-attention; level 1 is 16x16 for 32x32 inputs.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        dropout: dropout inside residual blocks.
        num_groups: GroupNorm groups (32 in the paper; fewer for tiny models).
        cond_dim: size of an extra conditioning vector (augmentation parameters), 0 for none.
    """

    model_config = ConfigDict(extra="forbid")

    ch: int = Field(128, gt=0)
    # At most 16 levels: 2**15 already exceeds the largest image size (4096).
    ch_mult: list[int] = Field(default_factory=lambda: [1, 2, 2, 2], min_length=1, max_length=16)
    attn: list[int] = Field(default_factory=lambda: [1], max_length=16)
    num_res_blocks: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    num_groups: int = Field(32, gt=0)
    cond_dim: int = Field(0, ge=0)

    @field_validator("ch_mult")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(m <= 0 for m in v):
            raise ValueError("channel multipliers must be positive")
        return v


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding with interleaved (sin, cos) pairs, as in the DDPM code."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) * 2 / dim)
    args = t.float()[:, None] * freqs[None, :]
    return torch.stack([torch.sin(args), torch.cos(args)], dim=-1).flatten(1)


def _xavier(module: nn.Module, gain: float = 1.0) -> None:
    init.xavier_uniform_(module.weight, gain=gain)
    if module.bias is not None:
        init.zeros_(module.bias)


def _matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention of ``[B, 1, N, C]`` rows as two low-precision matmuls and a softmax.

    For bf16 on the CPU (training and sampling): with gradients, SDPA's math path upcasts bf16 to
    fp32 and its fused CPU kernel is slower still; without, its flash kernel is 1.8x slower than this
    at the small config's attention (docs/benchmarks.md, issue 29). The softmax takes and returns the
    scores' dtype: torch's CPU kernel accumulates in fp32 and rounds once, so its output equals an fp32
    softmax cast down (bit for bit, tests/test_sampling_speed.py) without an fp32 ``[N, N]`` copy and
    its cast (1.10x on the attention's forward and backward; benchmarks/attention_softmax.py).
    """
    q, k, v = q.squeeze(1), k.squeeze(1), v.squeeze(1)
    scores = torch.bmm(q * q.shape[-1] ** -0.5, k.transpose(1, 2))
    # Autocast would run a bf16 softmax in fp32 (its CPU fp32 list): keep the dtype the matmul gave.
    with torch.autocast("cpu", enabled=False):
        weights = torch.softmax(scores, dim=-1)
    return torch.bmm(weights.to(v.dtype), v).unsqueeze(1)


class SelfAttention(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels)
        self.proj_q = nn.Conv2d(channels, channels, 1)
        self.proj_k = nn.Conv2d(channels, channels, 1)
        self.proj_v = nn.Conv2d(channels, channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        for m in (self.proj_q, self.proj_k, self.proj_v):
            _xavier(m)
        _xavier(self.proj, gain=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.group_norm(x)
        # [B, 1, HW, C]: the rows SDPA (fp32) and the bf16 matmuls (_matmul_attention) take.
        q, k, v = (p(n).flatten(2).transpose(1, 2).unsqueeze(1) for p in (self.proj_q, self.proj_k, self.proj_v))
        if cpu_low_precision(x):
            out = _matmul_attention(q, k, v)  # bf16 on the CPU, with or without gradients
        else:
            # fp32 keeps SDPA on the strided view (its math path), which the refactor-reference fixtures
            # pin bit for bit; an NHWC sampling copy (sampling/cpu_choice.py) gives it contiguous rows.
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj(out)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, tdim: int, dropout: float, groups: int, attn: bool):
        super().__init__()
        self.block1 = nn.Sequential(nn.GroupNorm(groups, in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.temb_proj = nn.Sequential(nn.SiLU(), nn.Linear(tdim, out_ch))
        self.block2 = nn.Sequential(
            nn.GroupNorm(groups, out_ch), nn.SiLU(), Dropout(dropout), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        )
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attn = SelfAttention(out_ch, groups) if attn else nn.Identity()
        for m in (self.block1[-1], self.temb_proj[-1], self.block2[-1]):
            _xavier(m)
        if isinstance(self.shortcut, nn.Conv2d):
            _xavier(self.shortcut)
        # Near-zero last conv: each block starts close to the identity.
        _xavier(self.block2[-1], gain=1e-5)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.temb_proj(temb)[:, :, None, None]
        h = self.block2(h) + self.shortcut(x)
        return self.attn(h)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.main = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
        _xavier(self.main)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.main = nn.Conv2d(ch, ch, 3, padding=1)
        _xavier(self.main)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.main(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """Class-conditional DDPM U-Net: ``forward(x_t, t, y, cond=None) -> eps``.

    Label ``num_classes`` is the null label; its embedding is fixed at zero, so an
    unconditional row is exactly the network without a class embedding.
    """

    def __init__(self, options: UNetOptions, *, image_size: int, channels: int, num_classes: int):
        super().__init__()
        o = options
        if any(a < 0 or a >= len(o.ch_mult) for a in o.attn):
            raise CbdmError(f"unet attn levels {o.attn} out of range for ch_mult of length {len(o.ch_mult)}")
        factor = 2 ** (len(o.ch_mult) - 1)
        if image_size % factor:
            raise CbdmError(
                f"image size {image_size} is not divisible by {factor}, required by ch_mult {o.ch_mult}"
            )
        widths = {o.ch * m for m in o.ch_mult} | {o.ch}
        if any(w % o.num_groups for w in widths):
            raise CbdmError(f"unet channel widths {sorted(widths)} must be divisible by num_groups={o.num_groups}")
        if num_classes < 0:
            raise CbdmError("num_classes must be >= 0")
        self.options = o
        self.num_classes = num_classes
        self.image_size = image_size
        self.channels = channels
        tdim = o.ch * 4
        self.temb_dim = o.ch
        self.time_embedding = nn.Sequential(nn.Linear(o.ch, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        for m in (self.time_embedding[0], self.time_embedding[2]):
            _xavier(m)
        # padding_idx keeps the null row at zero and out of the gradient.
        self.label_embedding = nn.Embedding(num_classes + 1, tdim, padding_idx=num_classes)
        self.cond_embedding = nn.Linear(o.cond_dim, tdim, bias=False) if o.cond_dim else None

        self.head = nn.Conv2d(channels, o.ch, 3, padding=1)
        _xavier(self.head)
        self.downblocks = nn.ModuleList()
        skip_chs = [o.ch]
        now = o.ch
        for level, mult in enumerate(o.ch_mult):
            out = o.ch * mult
            for _ in range(o.num_res_blocks):
                self.downblocks.append(ResBlock(now, out, tdim, o.dropout, o.num_groups, level in o.attn))
                now = out
                skip_chs.append(now)
            if level != len(o.ch_mult) - 1:
                self.downblocks.append(Downsample(now))
                skip_chs.append(now)
        self.middleblocks = nn.ModuleList([
            ResBlock(now, now, tdim, o.dropout, o.num_groups, attn=True),
            ResBlock(now, now, tdim, o.dropout, o.num_groups, attn=False),
        ])
        self.upblocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(o.ch_mult))):
            out = o.ch * mult
            for _ in range(o.num_res_blocks + 1):
                self.upblocks.append(ResBlock(skip_chs.pop() + now, out, tdim, o.dropout, o.num_groups, level in o.attn))
                now = out
            if level != 0:
                self.upblocks.append(Upsample(now))
        self.tail = nn.Sequential(nn.GroupNorm(o.num_groups, now), nn.SiLU(), nn.Conv2d(now, channels, 3, padding=1))
        _xavier(self.tail[-1], gain=1e-5)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None,
                cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        temb = self.time_embedding(timestep_embedding(t, self.temb_dim).to(x.dtype))
        if y is not None:
            temb = temb + self.label_embedding(y)
        if cond is not None and self.cond_embedding is not None:
            temb = temb + self.cond_embedding(cond.to(temb.dtype))
        h = self.head(x)
        skips = [h]
        for layer in self.downblocks:
            h = layer(h, temb)
            skips.append(h)
        for layer in self.middleblocks:
            h = layer(h, temb)
        for layer in self.upblocks:
            if isinstance(layer, ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = layer(h, temb)
        return self.tail(h)

    def feature_tap(self) -> FeatureTap:
        """The bottleneck: the feature map after the middle blocks, global-average-pooled to ``[N, C_mid]``."""
        return FeatureTap(self.middleblocks[-1], spatial_mean, self.options.ch * self.options.ch_mult[-1])

    def conv_parts(self) -> dict[str, list[tuple[str, nn.Conv2d]]]:
        """The 3x3 convolutions by part (``head``, ``down``, ``middle``, ``up``, ``tail``), with their names.

        Per residual block both 3x3 convolutions; the Down/Upsample convolutions belong to
        ``down``/``up``. The 1x1 shortcuts and the attention projections are left out (the
        layers CM's released code gives adapters).
        """
        names = {id(m): n for n, m in self.named_modules()}

        def block_convs(blocks: nn.ModuleList) -> list[nn.Conv2d]:
            out: list[nn.Conv2d] = []
            for layer in blocks:
                if isinstance(layer, ResBlock):
                    out += [layer.block1[-1], layer.block2[-1]]
                else:  # Downsample / Upsample
                    out.append(layer.main)
            return out

        parts = {"head": [self.head], "down": block_convs(self.downblocks), "middle": block_convs(self.middleblocks),
                 "up": block_convs(self.upblocks), "tail": [self.tail[-1]]}
        return {k: [(names[id(c)], c) for c in convs] for k, convs in parts.items()}


def build_unet(options: UNetOptions, *, image_size: int, channels: int, num_classes: int, **_: object) -> UNet:
    return UNet(options, image_size=image_size, channels=channels, num_classes=num_classes)
