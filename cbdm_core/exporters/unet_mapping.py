"""The exact correspondence between this project's DDPM U-Net and diffusers' ``UNet2DModel``.

Both are the Ho et al. (2020) U-Net; they differ only in names and three layouts:

* the sinusoidal time embedding: here interleaved ``(sin a_0, cos a_0, sin a_1, ...)``
  (:func:`cbdm_core.nets.unet.timestep_embedding`), in diffusers concatenated ``(sin a_0..,
  cos a_0..)`` with ``flip_sin_to_cos=False, freq_shift=0`` (the same frequencies
  ``10000^(-i/half)``), so the input columns of the first time-embedding layer are permuted;
* attention projections: 1x1 convolutions here, ``nn.Linear`` there (the same matrix);
* the class embedding: ``label_embedding`` here (null label = last row, zero), ``class_embedding``
  with ``num_class_embeds = num_classes + 1`` there, added to the time embedding in both.

Options that have no diffusers counterpart are refused by :func:`check_mappable`.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from ..errors import CbdmError

StateDict = dict[str, torch.Tensor]
# A key pair and how the tensor changes on the way to diffusers: "copy", "linear" (1x1 conv
# -> Linear) or "time" (permute the input columns of the first time-embedding layer).
Pair = tuple[str, str, str]

_RES_PARTS = (("block1.0", "norm1"), ("block1.2", "conv1"), ("temb_proj.1", "time_emb_proj"),
              ("block2.0", "norm2"), ("block2.3", "conv2"))
_ATTN_PARTS = (("group_norm", "group_norm", "copy"), ("proj_q", "to_q", "linear"), ("proj_k", "to_k", "linear"),
               ("proj_v", "to_v", "linear"), ("proj", "to_out.0", "linear"))


def check_mappable(options: Any, cond_dim: int) -> None:
    """Refuse U-Net options that ``UNet2DModel`` cannot express exactly (one line naming them)."""
    problems = []
    if options.ch_mult[0] != 1:
        problems.append(f"ch_mult[0] = {options.ch_mult[0]} (UNet2DModel ties conv_in, the time embedding and "
                        "conv_out to block_out_channels[0], so ch_mult must start with 1)")
    if options.ch % 2:
        problems.append(f"odd ch = {options.ch} (the sinusoidal time embedding needs an even width)")
    if cond_dim:
        problems.append(f"cond_dim = {cond_dim} (augmentation conditioning; UNet2DModel has no extra "
                        "conditioning input)")
    if problems:
        raise CbdmError("this U-Net cannot be exported to diffusers exactly: " + "; ".join(problems))


def diffusers_config(options: Any, *, image_size: int, channels: int, num_classes: int) -> dict[str, Any]:
    """The ``UNet2DModel`` config of the same network (``num_class_embeds`` includes the null label)."""
    levels = range(len(options.ch_mult))
    down = ["AttnDownBlock2D" if i in options.attn else "DownBlock2D" for i in levels]
    up = ["AttnUpBlock2D" if i in options.attn else "UpBlock2D" for i in reversed(levels)]
    return {
        "sample_size": image_size, "in_channels": channels, "out_channels": channels,
        "center_input_sample": False, "time_embedding_type": "positional",
        "flip_sin_to_cos": False, "freq_shift": 0,
        "down_block_types": down, "up_block_types": up, "mid_block_type": "UNetMidBlock2D",
        "block_out_channels": [options.ch * m for m in options.ch_mult],
        "layers_per_block": options.num_res_blocks, "mid_block_scale_factor": 1, "downsample_padding": 1,
        "downsample_type": "conv", "upsample_type": "conv", "dropout": options.dropout, "act_fn": "silu",
        # None: one head as wide as the block, which is the project's single-head attention.
        "attention_head_dim": None, "norm_num_groups": options.num_groups, "attn_norm_num_groups": None,
        "norm_eps": 1e-5, "resnet_time_scale_shift": "default", "add_attention": True,
        "class_embed_type": None, "num_class_embeds": num_classes + 1,
    }


def _resblock(src: str, dst: str, shortcut: bool, attn_src: str | None, attn_dst: str | None) -> Iterator[Pair]:
    for a, b in _RES_PARTS:
        for p in ("weight", "bias"):
            yield f"{src}.{a}.{p}", f"{dst}.{b}.{p}", "copy"
    if shortcut:
        for p in ("weight", "bias"):
            yield f"{src}.shortcut.{p}", f"{dst}.conv_shortcut.{p}", "copy"
    if attn_src is not None:
        for a, b, how in _ATTN_PARTS:
            for p in ("weight", "bias"):
                yield f"{attn_src}.{a}.{p}", f"{attn_dst}.{b}.{p}", how


def key_pairs(options: Any) -> list[Pair]:
    """Every ``(project key, diffusers key, transform)`` of a U-Net with ``options``, in module order."""
    o = options
    pairs: list[Pair] = []
    for a, b in (("time_embedding.0", "time_embedding.linear_1"), ("time_embedding.2", "time_embedding.linear_2"),
                 ("head", "conv_in"), ("tail.0", "conv_norm_out"), ("tail.2", "conv_out")):
        pairs += [(f"{a}.{p}", f"{b}.{p}", "time" if a == "time_embedding.0" and p == "weight" else "copy")
                  for p in ("weight", "bias")]
    pairs.append(("label_embedding.weight", "class_embedding.weight", "copy"))
    widths, now, skips, n = [o.ch * m for m in o.ch_mult], o.ch, [o.ch], 0
    for level, out in enumerate(widths):
        for j in range(o.num_res_blocks):
            dst = f"down_blocks.{level}"
            attn = (f"downblocks.{n}.attn", f"{dst}.attentions.{j}") if level in o.attn else (None, None)
            pairs += _resblock(f"downblocks.{n}", f"{dst}.resnets.{j}", now != out, *attn)
            now, n = out, n + 1
            skips.append(now)
        if level != len(widths) - 1:
            pairs += [(f"downblocks.{n}.main.{p}", f"down_blocks.{level}.downsamplers.0.conv.{p}", "copy")
                      for p in ("weight", "bias")]
            n += 1
            skips.append(now)
    pairs += _resblock("middleblocks.0", "mid_block.resnets.0", False, "middleblocks.0.attn", "mid_block.attentions.0")
    pairs += _resblock("middleblocks.1", "mid_block.resnets.1", False, None, None)
    n = 0
    for i, level in enumerate(reversed(range(len(widths)))):
        out = widths[level]
        for j in range(o.num_res_blocks + 1):
            dst = f"up_blocks.{i}"
            attn = (f"upblocks.{n}.attn", f"{dst}.attentions.{j}") if level in o.attn else (None, None)
            pairs += _resblock(f"upblocks.{n}", f"{dst}.resnets.{j}", skips.pop() + now != out, *attn)
            now, n = out, n + 1
        if level != 0:
            pairs += [(f"upblocks.{n}.main.{p}", f"up_blocks.{i}.upsamplers.0.conv.{p}", "copy")
                      for p in ("weight", "bias")]
            n += 1
    return pairs


def _interleave_order(width: int) -> torch.Tensor:
    """Column order taking the interleaved (sin, cos) layout to the concatenated one."""
    half = width // 2
    return torch.cat([torch.arange(half) * 2, torch.arange(half) * 2 + 1])


def _forward(value: torch.Tensor, how: str) -> torch.Tensor:
    if how == "linear":
        return value.reshape(value.shape[0], -1) if value.ndim == 4 else value
    if how == "time":
        return value[:, _interleave_order(value.shape[1])]
    return value


def _backward(value: torch.Tensor, how: str) -> torch.Tensor:
    if how == "linear":
        return value.reshape(*value.shape, 1, 1) if value.ndim == 2 else value
    if how == "time":
        out = torch.empty_like(value)
        out[:, _interleave_order(value.shape[1])] = value
        return out
    return value


def _check_keys(have: set[str], want: set[str], what: str) -> None:
    missing, extra = sorted(want - have), sorted(have - want)
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:4])}"] if missing else []) + (
            [f"unexpected {', '.join(extra[:4])}"] if extra else [])
        raise CbdmError(f"{what} does not match the U-Net layout: {'; '.join(parts)}")


def to_diffusers(state: StateDict, options: Any) -> StateDict:
    """This project's U-Net state dict -> ``UNet2DModel`` keys (contiguous float copies)."""
    pairs = key_pairs(options)
    _check_keys(set(state), {a for a, _, _ in pairs}, "the model's state dict")
    return {b: _forward(state[a].detach().cpu(), how).contiguous().clone() for a, b, how in pairs}


def from_diffusers(state: StateDict, options: Any) -> StateDict:
    """``UNet2DModel`` state dict -> this project's U-Net keys (contiguous copies)."""
    pairs = key_pairs(options)
    _check_keys(set(state), {b for _, b, _ in pairs}, "the diffusers UNet2DModel")
    return {a: _backward(state[b].detach().cpu(), how).contiguous().clone() for a, b, how in pairs}
