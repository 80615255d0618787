"""A diffusion transformer (DiT-style, Peebles & Xie 2023) from timm's building blocks.

Patches (``timm.layers.PatchEmbed``) plus a position embedding go through
transformer blocks made of timm's ``Attention`` and ``Mlp``. The condition
``c = emb(t) + emb(y) [+ W cond]`` enters every block by adaptive LayerNorm with
zero-initialised gates (adaLN-Zero): each block starts as the identity and the
output layer starts at zero, so a fresh model predicts eps = 0. Label
``num_classes`` is the null label, its embedding fixed at zero (``padding_idx``),
as in the U-Net.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from ..errors import CbdmError
from .attention_path import pick_timm_attention
from .tap import FeatureTap, token_mean
from .unet import timestep_embedding

# (depth, width, heads): ViT-Ti (DeiT-Ti), DiT-S, DiT-B.
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (12, 192, 3),
    "small": (12, 384, 6),
    "base": (12, 768, 12),
}
FREQ_DIM = 256  # sinusoidal timestep features before the MLP, as in DiT


class ViTOptions(BaseModel):
    """Architecture options of the diffusion ViT.

    Args:
        size: ``tiny`` (12 blocks, width 192, 3 heads), ``small`` (12, 384, 6), ``base``
            (12, 768, 12), or ``custom`` (``depth``, ``width`` and ``heads`` required).
        patch_size: patch side; the image size must be a multiple of it.
        depth, width, heads: override the size's values.
        mlp_ratio: hidden width of the MLPs relative to ``width``.
        dropout: dropout in the attention projection and the MLPs.
        pos_embed: ``sincos`` (fixed 2-D sine-cosine) or ``learned``.
        cond_dim: size of an extra conditioning vector (augmentation parameters), 0 for none.
    """

    model_config = ConfigDict(extra="forbid")

    size: Literal["tiny", "small", "base", "custom"] = "small"
    patch_size: int = Field(2, ge=1)
    depth: Optional[int] = Field(None, ge=1)
    width: Optional[int] = Field(None, ge=1)
    heads: Optional[int] = Field(None, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    pos_embed: Literal["sincos", "learned"] = "sincos"
    cond_dim: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "ViTOptions":
        if self.size == "custom" and None in (self.depth, self.width, self.heads):
            raise ValueError("size custom needs depth, width and heads")
        _, width, heads = self.resolved()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        if self.pos_embed == "sincos" and width % 4:
            raise ValueError(f"the sincos position embedding needs a width divisible by 4, got {width}")
        return self

    def resolved(self) -> tuple[int, int, int]:
        """``(depth, width, heads)`` after applying the overrides."""
        depth, width, heads = SIZES.get(self.size, (0, 0, 0))
        return (self.depth or depth, self.width or width, self.heads or heads)


def sincos_pos_embed(width: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding ``[grid * grid, width]`` (half the channels per axis)."""
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    yy, xx = torch.meshgrid(pos, pos, indexing="ij")

    def axis(p: torch.Tensor) -> torch.Tensor:
        args = p.reshape(-1, 1) * omega[None, :]
        return torch.cat([args.sin(), args.cos()], dim=1)

    return torch.cat([axis(yy), axis(xx)], dim=1).float()


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nn.Module):
    """Pre-norm transformer block; shift, scale and gate of both branches come from the condition."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        # timm (and the torchvision it imports) costs ~2 s: loaded when a ViT is built, not on import.
        from timm.layers import Mlp
        from timm.models.vision_transformer import Attention

        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, num_heads=heads, qkv_bias=True, proj_drop=dropout)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, hidden_features=int(width * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"),
                       drop=dropout)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        pick_timm_attention(self.attn, x)
        x = x + gate1[:, None, :] * self.attn(_modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None, :] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, width: int, patch_size: int, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, patch_size * patch_size * channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm(x), shift, scale))


class DiffusionViT(nn.Module):
    """Class-conditional diffusion transformer: ``forward(x_t, t, y, cond=None) -> eps``.

    ``t`` may be integer timesteps or floats (the EDM wrapper passes 250 ln sigma).
    """

    def __init__(self, options: ViTOptions, *, image_size: int, channels: int, num_classes: int):
        super().__init__()
        o = options
        depth, width, heads = o.resolved()
        p = o.patch_size
        if image_size % p:
            raise CbdmError(f"image size {image_size} is not divisible by the vit patch size {p}")
        if num_classes < 0:
            raise CbdmError("num_classes must be >= 0")
        self.options = o
        self.num_classes = num_classes
        self.image_size = image_size
        self.channels = channels
        self.patch_size = p
        self.grid = image_size // p

        from timm.layers import PatchEmbed  # see DiTBlock: imported where used

        self.patch_embed = PatchEmbed(img_size=image_size, patch_size=p, in_chans=channels, embed_dim=width)
        tokens = self.grid * self.grid
        if o.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, tokens, width))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            # Not persistent: a function of the shape, recomputed on construction.
            self.register_buffer("pos_embed", sincos_pos_embed(width, self.grid)[None], persistent=False)
        self.time_embedding = nn.Sequential(nn.Linear(FREQ_DIM, width), nn.SiLU(), nn.Linear(width, width))
        # padding_idx keeps the null row at zero and out of the gradient.
        self.label_embedding = nn.Embedding(num_classes + 1, width, padding_idx=num_classes)
        self.cond_embedding = nn.Linear(o.cond_dim, width, bias=False) if o.cond_dim else None
        self.blocks = nn.ModuleList([DiTBlock(width, heads, o.mlp_ratio, o.dropout) for _ in range(depth)])
        self.final = FinalLayer(width, p, channels)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Patch projection like a linear layer over the flattened patch.
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.label_embedding.weight, std=0.02)
        self.label_embedding.weight[self.num_classes].zero_()
        for m in (self.time_embedding[0], self.time_embedding[2]):
            nn.init.normal_(m.weight, std=0.02)
        # adaLN-Zero: gates (and the output) start at zero, so every block is the identity.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for m in (self.final.adaLN_modulation[-1], self.final.linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, p * p * C]`` tokens -> ``[B, C, H, W]``."""
        b, g, p, c = x.shape[0], self.grid, self.patch_size, self.channels
        x = x.reshape(b, g, g, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(b, c, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None,
                cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        c = self.time_embedding(timestep_embedding(t, FREQ_DIM).to(x.dtype))
        if y is not None:
            c = c + self.label_embedding(y)
        if cond is not None and self.cond_embedding is not None:
            c = c + self.cond_embedding(cond.to(c.dtype))
        h = self.patch_embed(x) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final(h, c))

    def feature_tap(self) -> FeatureTap:
        """The token mean after block ``depth // 2`` (the output of the first half of the blocks)."""
        depth = len(self.blocks)
        return FeatureTap(self.blocks[max(depth // 2, 1) - 1], token_mean, self.options.resolved()[1])


def build_vit(options: ViTOptions, *, image_size: int, channels: int, num_classes: int,
              **_: object) -> DiffusionViT:
    return DiffusionViT(options, image_size=image_size, channels=channels, num_classes=num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(int(math.prod(p.shape)) for p in model.parameters())
