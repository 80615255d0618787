"""Weights of the released GenViT (sndnyang/Diffusion_ViT) in ``DiffusionGenViT``'s names.

The released model (``models/DifViT.py``, class ``ViT``) names its parameters after its
modules; a training checkpoint holds them under ``denoise_fn.`` (the ``GaussianDiffusion``
wrapper) next to the schedule's buffers. ``map_released_genvit`` renames them, reshapes
the patch embedding (a linear layer over ``(row, column, channel)`` pixels there, a
convolution here) and drops the classifier head (HybViT's ``mlp_head``), which the
diffusion pass never reads. The label embedding has no released counterpart: a loaded
model keeps its own, and with the null label it adds nothing.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import CbdmError

# (released name pattern, our name); \1 is the block index.
_RULES: list[tuple[str, str]] = [
    (r"to_patch_embedding\.1\.bias", "patch_embed.proj.bias"),
    (r"cls_token", "cls_token"),
    (r"pos_embedding", "pos_embed"),
    (r"time_mlp\.1\.(weight|bias)", r"time_embedding.0.\1"),
    (r"time_mlp\.3\.(weight|bias)", r"time_embedding.2.\1"),
    (r"transformer\.time_layers\.(\d+)\.1\.(weight|bias)", r"blocks.\1.time.1.\2"),
    (r"transformer\.layers\.(\d+)\.0\.norm\.(weight|bias)", r"blocks.\1.block.norm1.\2"),
    (r"transformer\.layers\.(\d+)\.0\.fn\.to_qkv\.weight", r"blocks.\1.block.attn.qkv.weight"),
    (r"transformer\.layers\.(\d+)\.0\.fn\.to_out\.0\.(weight|bias)", r"blocks.\1.block.attn.proj.\2"),
    (r"transformer\.layers\.(\d+)\.1\.norm\.(weight|bias)", r"blocks.\1.block.norm2.\2"),
    (r"transformer\.layers\.(\d+)\.1\.fn\.net\.0\.(weight|bias)", r"blocks.\1.block.mlp.fc1.\2"),
    (r"transformer\.layers\.(\d+)\.1\.fn\.net\.3\.(weight|bias)", r"blocks.\1.block.mlp.fc2.\2"),
    (r"recon_head\.0\.(weight|bias)", r"head.\1"),
]
_DROPPED = re.compile(r"mlp_head\..*")


def _rename(name: str) -> str:
    for pattern, target in _RULES:
        match = re.fullmatch(pattern, name)
        if match:
            return match.expand(target)
    raise CbdmError(f"released GenViT weight {name!r} has no counterpart (LSA/SPT variants are not supported)")


def map_released_genvit(state: dict[str, torch.Tensor], *, channels: int = 3) -> dict[str, torch.Tensor]:
    """Released GenViT parameters (with or without the ``denoise_fn.`` prefix) -> our names."""
    prefix = "denoise_fn."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if _DROPPED.fullmatch(name):
            continue
        if name == "to_patch_embedding.1.weight":
            # [D, (p1 p2 c)] -> the convolution's [D, c, p1, p2]
            width, patch_dim = value.shape
            p = int(round((patch_dim // channels) ** 0.5))
            if p * p * channels != patch_dim:
                raise CbdmError(f"patch weight {tuple(value.shape)} does not fit {channels} channels")
            out["patch_embed.proj.weight"] = value.reshape(width, p, p, channels).permute(0, 3, 1, 2).contiguous()
            continue
        out[_rename(name)] = value
    return out


def load_released_genvit(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load released weights into ``model``; only the label (and cond) embedding may stay unset."""
    mapped = map_released_genvit(state, channels=model.channels)
    try:
        missing, unexpected = model.load_state_dict(mapped, strict=False)
    except RuntimeError as exc:  # shape mismatches: another configuration
        raise CbdmError(f"released GenViT weights do not fit this model: {str(exc).splitlines()[-1].strip()}") from None
    missing = [k for k in missing if not k.startswith(("label_embedding.", "cond_embedding."))]
    if missing or unexpected:
        raise CbdmError(f"released GenViT weights do not fit this model: missing {missing}, unexpected {unexpected}")
