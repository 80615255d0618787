"""GenViT: the Diffusion-ViT of Yang et al. (2022), the ViT of the CBDM paper's Table 5.

Architecture facts from the released code (sndnyang/Diffusion_ViT, commit 84a4cfe,
``models/DifViT.py``, ``models/vit.py``, ``models/create_model.py``), rebuilt here from
timm's transformer ``Block`` (pre-norm attention without qkv bias, GELU MLP):

* patches -> linear embedding, a learned class token in front, a learned position
  embedding over all ``N + 1`` tokens;
* time: sinusoid of width ``width`` (frequencies ``10000^(-k / (half - 1))``, sines then
  cosines) -> Linear -> GELU -> Linear, to ``4 (N + 1)`` values;
* every block turns ``SiLU(time)`` by its own linear layer into one scale and one shift
  per TOKEN (``2 (N + 1)`` values) and applies ``x (1 + scale) + shift`` to the residual
  stream before the attention and (``ffn_time``, the released default) again before the MLP;
* no final norm: a linear layer maps each patch token back to its pixels.

The label enters as CBDM adds it to its U-Net: an embedding of the class, added to the
time vector (``4 (N + 1)`` values) before the per-block layers. Label ``num_classes`` is the
null label, its row fixed at zero, so the unconditional model is exactly the released
network. The released classifier head (HybViT's ``mlp_head``) is not built: GenViT's
diffusion pass never uses it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from ..errors import CbdmError
from .attention_path import pick_timm_attention
from .tap import FeatureTap, token_mean


class GenViTOptions(BaseModel):
    """GenViT architecture; the defaults are the released CIFAR configuration.

    Args:
        patch_size: patch side (4 on 32x32 in the release).
        depth, width, heads: transformer blocks (9), token width (384), heads (12).
        mlp_ratio: MLP hidden width relative to ``width`` (2).
        dropout: dropout after the attention projection and in the MLP (0 in the release).
        ffn_time: modulate the residual stream again before each MLP (the release's ``--ffnt 1``).
        cond_dim: size of an extra conditioning vector (augmentation parameters), 0 for none.
    """

    model_config = ConfigDict(extra="forbid")

    patch_size: int = Field(4, ge=1)
    depth: int = Field(9, ge=1)
    width: int = Field(384, ge=4)
    heads: int = Field(12, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    ffn_time: bool = True
    cond_dim: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "GenViTOptions":
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.width % 2:
            raise ValueError(f"the time sinusoid needs an even width, got {self.width}")
        return self


def genvit_time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """GenViT's sinusoid ``[B] -> [B, dim]``: all sines, then all cosines.

    Differs from DDPM's embedding (``timestep_embedding``) in the frequency spacing
    (``half - 1`` in the exponent's denominator) and in the channel order.
    """
    half = dim // 2
    step = math.log(10000.0) / (half - 1)
    freqs = torch.exp(-step * torch.arange(half, device=t.device, dtype=torch.float32))
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([args.sin(), args.cos()], dim=-1)


class GenViTBlock(nn.Module):
    """A timm ``Block`` whose residual stream is scaled and shifted per token by the time vector."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float, tokens: int, ffn_time: bool):
        super().__init__()
        # timm costs ~2 s to import: loaded when a GenViT is built, not on import.
        from timm.models.vision_transformer import Block

        self.ffn_time = ffn_time
        self.time = nn.Sequential(nn.SiLU(), nn.Linear(4 * tokens, 2 * tokens))
        # torch's LayerNorm (eps 1e-5) as in the release; timm's blocks default to eps 1e-6.
        self.block = Block(width, heads, mlp_ratio=mlp_ratio, qkv_bias=False, proj_drop=dropout,
                           norm_layer=nn.LayerNorm)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        # [B, 2 (N + 1)] -> one scale and one shift per token, broadcast over the channels.
        scale, shift = self.time(temb)[:, :, None].chunk(2, dim=1)
        b = self.block
        x = x * (1 + scale) + shift
        pick_timm_attention(b.attn, x)
        x = x + b.drop_path1(b.ls1(b.attn(b.norm1(x))))
        if self.ffn_time:
            x = x * (1 + scale) + shift
        return x + b.drop_path2(b.ls2(b.mlp(b.norm2(x))))


class DiffusionGenViT(nn.Module):
    """Class-conditional GenViT: ``forward(x_t, t, y, cond=None) -> eps``."""

    def __init__(self, options: GenViTOptions, *, image_size: int, channels: int, num_classes: int):
        super().__init__()
        o = options
        p = o.patch_size
        if image_size % p:
            raise CbdmError(f"image size {image_size} is not divisible by the genvit patch size {p}")
        if num_classes < 0:
            raise CbdmError("num_classes must be >= 0")
        self.options, self.num_classes = o, num_classes
        self.image_size, self.channels, self.patch_size = image_size, channels, p
        self.grid = image_size // p
        tokens = self.grid * self.grid + 1  # patches and the class token
        tdim = 4 * tokens

        from timm.layers import PatchEmbed  # see GenViTBlock: imported where used

        self.patch_embed = PatchEmbed(img_size=image_size, patch_size=p, in_chans=channels, embed_dim=o.width)
        self.cls_token = nn.Parameter(torch.randn(1, 1, o.width))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, o.width))
        self.time_embedding = nn.Sequential(nn.Linear(o.width, tdim), nn.GELU(), nn.Linear(tdim, tdim))
        # padding_idx keeps the null row at zero and out of the gradient.
        self.label_embedding = nn.Embedding(num_classes + 1, tdim, padding_idx=num_classes)
        self.cond_embedding = nn.Linear(o.cond_dim, tdim, bias=False) if o.cond_dim else None
        self.blocks = nn.ModuleList([GenViTBlock(o.width, o.heads, o.mlp_ratio, o.dropout, tokens, o.ffn_time)
                                     for _ in range(o.depth)])
        self.head = nn.Linear(o.width, p * p * channels)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # The release: Xavier-normal linear weights, zero biases, LayerNorms at (1, 0),
        # standard-normal class token and position embedding (set in __init__).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # The release's patch embedding is a linear layer over the flattened patch: same fans.
        w = self.patch_embed.proj.weight
        nn.init.xavier_normal_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        # Not in the release. Small (DiT's 0.02) so the labelled model starts near the released
        # one: the time vector has std ~0.5, and a unit-variance label row made the untrained
        # output ~7x larger (GenViT's per-token modulation compounds over the blocks).
        nn.init.normal_(self.label_embedding.weight, std=0.02)
        self.label_embedding.weight[self.num_classes].zero_()

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, p * p * C]`` tokens (pixels ordered row, column, channel) -> ``[B, C, H, W]``."""
        b, g, p, c = x.shape[0], self.grid, self.patch_size, self.channels
        x = x.reshape(b, g, g, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(b, c, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None,
                cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        temb = self.time_embedding(genvit_time_features(t, self.options.width).to(x.dtype))
        if y is not None:
            temb = temb + self.label_embedding(y)
        if cond is not None and self.cond_embedding is not None:
            temb = temb + self.cond_embedding(cond.to(temb.dtype))
        h = self.patch_embed(x)
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1) + self.pos_embed
        for block in self.blocks:
            h = block(h, temb)
        return self.unpatchify(self.head(h[:, 1:]))

    def feature_tap(self) -> FeatureTap:
        """The token mean (class token included) after block ``depth // 2``."""
        depth = len(self.blocks)
        return FeatureTap(self.blocks[max(depth // 2, 1) - 1], token_mean, self.options.width)


def build_genvit(options: GenViTOptions, *, image_size: int, channels: int, num_classes: int,
                 **_: object) -> DiffusionGenViT:
    return DiffusionGenViT(options, image_size=image_size, channels=channels, num_classes=num_classes)
