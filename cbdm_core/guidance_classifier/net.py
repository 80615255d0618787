"""The noise-aware classifier network and its safetensors file.

A small timestep-conditioned CNN: per resolution level one residual block whose
activations are shifted by a projection of the sinusoidal time embedding (like the
project's U-Net), a stride-2 downsample between levels, global average pooling and a
linear head. It reads images in the model's space ([-1, 1] at t = 0, x_t otherwise).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from ..errors import CbdmError
from ..nets.unet import timestep_embedding
from ..schedules import NoiseSchedule
from ..tensor_io import load_format_file, save_tensors

FORMAT = "cbdm-noisy-classifier-v1"
BETAS_KEY = "schedule.betas"  # the training schedule, stored with the weights


class NoisyClassifierOptions(BaseModel):
    """Architecture options, stored in the file's metadata."""

    model_config = ConfigDict(extra="forbid")

    in_channels: int = Field(ge=1)
    num_classes: int = Field(ge=1)
    image_size: int = Field(ge=1)
    width: int = Field(32, ge=4)
    levels: int = Field(2, ge=1, le=5)
    emb_dim: int = Field(64, ge=8)


def _groups(channels: int) -> int:
    return 8 if channels % 8 == 0 else 1


class _TimeBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added in between, plus a skip."""

    def __init__(self, channels: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(channels), channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, channels)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(channels), channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        return x + self.conv2(self.act(self.norm2(h)))


class NoisyClassifier(nn.Module):
    """``logits = net(x_t, t)``, ``t`` integer timesteps ``[B]``."""

    def __init__(self, options: NoisyClassifierOptions):
        super().__init__()
        self.options = options
        w, e = options.width, options.emb_dim
        self.time = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.stem = nn.Conv2d(options.in_channels, w, 3, padding=1)
        self.blocks = nn.ModuleList(_TimeBlock(w, e) for _ in range(options.levels))
        # Stride 2 between levels; a 1-pixel map stays 1 pixel (padding 1).
        self.down = nn.ModuleList(nn.Conv2d(w, w, 3, stride=2, padding=1) for _ in range(options.levels - 1))
        self.out_norm = nn.GroupNorm(_groups(w), w)
        self.head = nn.Linear(w, options.num_classes)
        self.meta: dict[str, Any] = {}

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.options.emb_dim))
        h = self.stem(x)
        for i, block in enumerate(self.blocks):
            h = block(h, emb)
            if i < len(self.down):
                h = self.down[i](h)
        h = torch.nn.functional.silu(self.out_norm(h)).mean(dim=(2, 3))
        return self.head(h)


def save_noisy_classifier(model: NoisyClassifier, schedule: NoiseSchedule, path: str | os.PathLike,
                          meta: dict[str, Any]) -> None:
    """Weights, the training schedule's betas and JSON metadata, written atomically."""
    tensors = {**{k: v.detach().cpu() for k, v in model.state_dict().items()},
               BETAS_KEY: schedule.betas.detach().cpu()}
    save_tensors(path, tensors, {"format": FORMAT, "options": model.options.model_dump_json(),
                                 "meta": json.dumps(meta)})


def load_noisy_classifier(path: str | os.PathLike) -> tuple[NoisyClassifier, NoiseSchedule]:
    """``(classifier in eval mode on the CPU, its training schedule)``; ``classifier.meta``
    holds the metadata. A missing or foreign file is a one-line :class:`CbdmError`."""
    path = Path(path)
    hint = "train one with `cbdm train-classifier --noisy RUN`"
    state, metadata = load_format_file(path, FORMAT, kind="classifier file", make_hint=hint,
                                       foreign=f"a noise-aware classifier file ({hint})")
    try:
        options = NoisyClassifierOptions.model_validate_json(metadata["options"])
        meta = json.loads(metadata.get("meta", "{}"))
        betas = state.pop(BETAS_KEY)
        model = NoisyClassifier(options)
        model.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError, ValidationError) as e:
        raise CbdmError(f"classifier file {path} is damaged or from another version: {str(e).splitlines()[0]}") from None
    model.meta = meta
    return model.eval(), NoiseSchedule(betas, name=str(meta.get("schedule", "custom")))
