"""A compact re-implementation of the reference pytorch-ddpm / CBDM U-Net (its module names, its
time-embedding table, its bmm attention): the source model of the checkpoint import tests."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class TimeEmbedding(nn.Module):
    def __init__(self, T: int, d_model: int, dim: int):
        super().__init__()
        freq = torch.exp(-torch.arange(0, d_model, step=2) / d_model * math.log(10000))
        ang = torch.arange(T).float()[:, None] * freq[None, :]
        table = torch.stack([torch.sin(ang), torch.cos(ang)], dim=-1).view(T, d_model)
        self.timembedding = nn.Sequential(nn.Embedding.from_pretrained(table), nn.Linear(d_model, dim), Swish(),
                                          nn.Linear(dim, dim))

    def forward(self, t):
        return self.timembedding(t)


class RefDown(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.main = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x, temb):
        return self.main(x)


class RefUp(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.main = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, temb):
        return self.main(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


class RefAttn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.group_norm = nn.GroupNorm(32, c)
        self.proj_q, self.proj_k, self.proj_v, self.proj = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.group_norm(x)
        q = self.proj_q(h).permute(0, 2, 3, 1).reshape(B, H * W, C)
        k = self.proj_k(h).reshape(B, C, H * W)
        w = torch.softmax(torch.bmm(q, k) * C ** -0.5, dim=-1)
        v = self.proj_v(h).permute(0, 2, 3, 1).reshape(B, H * W, C)
        h = torch.bmm(w, v).reshape(B, H, W, C).permute(0, 3, 1, 2)
        return x + self.proj(h)


class RefRes(nn.Module):
    def __init__(self, cin, cout, tdim, dropout, attn=False):
        super().__init__()
        self.block1 = nn.Sequential(nn.GroupNorm(32, cin), Swish(), nn.Conv2d(cin, cout, 3, padding=1))
        self.temb_proj = nn.Sequential(Swish(), nn.Linear(tdim, cout))
        self.block2 = nn.Sequential(nn.GroupNorm(32, cout), Swish(), nn.Dropout(dropout),
                                    nn.Conv2d(cout, cout, 3, padding=1))
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.attn = RefAttn(cout) if attn else nn.Identity()

    def forward(self, x, temb):
        h = self.block1(x) + self.temb_proj(temb)[:, :, None, None]
        return self.attn(self.block2(h) + self.shortcut(x))


class RefUNet(nn.Module):
    """The pytorch-ddpm / CBDM U-Net layout (cond: label_embedding, augm: augm_embedding)."""

    def __init__(self, T=50, ch=32, ch_mult=(1, 2), attn=(1,), num_res_blocks=1, dropout=0.1,
                 num_class=3, augm=True, in_ch=3):
        super().__init__()
        tdim = ch * 4
        self.time_embedding = TimeEmbedding(T, ch, tdim)
        if num_class:
            self.label_embedding = nn.Embedding(num_class, tdim)
        if augm:
            self.augm_embedding = nn.Linear(9, tdim, bias=False)
        self.head = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.downblocks = nn.ModuleList()
        chs, now = [ch], ch
        for i, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.downblocks.append(RefRes(now, ch * mult, tdim, dropout, attn=i in attn))
                now = ch * mult
                chs.append(now)
            if i != len(ch_mult) - 1:
                self.downblocks.append(RefDown(now))
                chs.append(now)
        self.middleblocks = nn.ModuleList([RefRes(now, now, tdim, dropout, True), RefRes(now, now, tdim, dropout)])
        self.upblocks = nn.ModuleList()
        for i, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.upblocks.append(RefRes(chs.pop() + now, ch * mult, tdim, dropout, attn=i in attn))
                now = ch * mult
            if i != 0:
                self.upblocks.append(RefUp(now))
        self.tail = nn.Sequential(nn.GroupNorm(32, now), Swish(), nn.Conv2d(now, in_ch, 3, padding=1))

    def forward(self, x, t, y=None, augm=None):
        temb = self.time_embedding(t)
        if y is not None:
            temb = temb + self.label_embedding(y)
        if augm is not None:
            temb = temb + self.augm_embedding(augm)
        h = self.head(x)
        hs = [h]
        for layer in self.downblocks:
            h = layer(h, temb)
            hs.append(h)
        for layer in self.middleblocks:
            h = layer(h, temb)
        for layer in self.upblocks:
            if isinstance(layer, RefRes):
                h = torch.cat([h, hs.pop()], dim=1)
            h = layer(h, temb)
        return self.tail(h)


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial weights everywhere (the frozen time table stays)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "timembedding.0" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def save_reference_checkpoint(path: Path, **kw) -> tuple[RefUNet, RefUNet]:
    net, ema = randomised(RefUNet(**kw), 1), randomised(RefUNet(**kw), 2)
    torch.save({"net_model": net.state_dict(), "ema_model": ema.state_dict(), "step": 123,
                "x_T": torch.randn(2, 3, 8, 8), "sched": {"last_epoch": 5}}, path)
    return net, ema
