"""Load trained runs and checkpoints as ready-to-sample denoisers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch

from . import build
from .checkpoint import list_checkpoints, load_checkpoint, load_state_checked
from .config import TrainConfig, parse_train_config
from .errors import CheckpointError
from .schedules import NoiseSchedule


@dataclass
class LoadedRun:
    """A model from a checkpoint, with everything needed to sample it."""

    model: torch.nn.Module
    schedule: NoiseSchedule
    config: TrainConfig
    checkpoint: Path
    step: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    @property
    def trained_with_label_dropout(self) -> bool:
        return self.config.objective.p_uncond > 0


def resolve_checkpoint(path: Union[str, Path]) -> Path:
    """A run folder resolves to its latest checkpoint; a file is taken as is."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
        if not found:
            raise CheckpointError(f"no checkpoint found in {path}")
        return found[-1][1]
    if not path.exists():
        raise CheckpointError(f"no such run folder or checkpoint: {path}")
    return path


def load_run(path: Union[str, Path], *, ema: bool = True, device: Union[str, torch.device] = "cpu") -> LoadedRun:
    """Load a run folder or checkpoint file.

    Args:
        path: run folder (latest checkpoint) or a ``.safetensors`` checkpoint.
        ema: use the EMA weights (default) instead of the raw weights.
        device: where to put the model.
    """
    ckpt_path = resolve_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    cfg = parse_train_config(ckpt.config, f"config stored in {ckpt_path}")
    meta = ckpt.meta
    try:
        image_size, channels, num_classes = int(meta["image_size"]), int(meta["channels"]), int(meta["num_classes"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{ckpt_path} lacks the image size / channels / classes metadata") from None
    model = build.build_model(cfg, image_size=image_size, channels=channels, num_classes=num_classes,
                              cond_dim=int(meta.get("cond_dim", 0)))
    load_state_checked(model, ckpt.ema if ema else ckpt.model, f"{ckpt_path} ({'EMA' if ema else 'raw'} weights)")
    model.to(device).eval().requires_grad_(False)
    return LoadedRun(model=model, schedule=build.build_schedule(cfg), config=cfg, checkpoint=ckpt_path,
                     step=ckpt.step, meta=meta)


def load_denoiser(path: Union[str, Path], *, ema: bool = True, device: Union[str, torch.device] = "cpu"):
    """``(model, schedule)`` from a run folder or checkpoint; ``model(x_t, t, y)`` predicts the noise."""
    run = load_run(path, ema=ema, device=device)
    return run.model, run.schedule
