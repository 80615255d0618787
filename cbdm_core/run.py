"""Load trained runs and checkpoints as ready-to-sample denoisers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch

from . import build
from .checkpoint import load_checkpoint, load_state_checked
from .config import TrainConfig, parse_train_config
from .errors import CheckpointError
from .run_folder import resolve_checkpoint
from .schedules import NoiseSchedule

__all__ = ["LoadedRun", "load_run", "load_denoiser", "resolve_checkpoint"]


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
    schedule = build.build_schedule(cfg)
    # Methods add their modules before the weights load, and may change the net for sampling after.
    methods = build.build_methods(cfg, class_counts=_class_counts(meta, num_classes, ckpt_path),
                                  num_classes=num_classes, schedule=schedule) if cfg.objective.methods else []
    build.attach_methods(methods, model)
    load_state_checked(model, ckpt.ema if ema else ckpt.model, f"{ckpt_path} ({'EMA' if ema else 'raw'} weights)")
    for method in methods:
        method.for_sampling(model)
    model.to(device).eval().requires_grad_(False)
    return LoadedRun(model=model, schedule=schedule, config=cfg, checkpoint=ckpt_path, step=ckpt.step, meta=meta)


def _class_counts(meta: dict[str, Any], num_classes: int, ckpt_path: Path) -> torch.Tensor:
    counts = meta.get("class_counts")
    if counts is None:  # imported checkpoints may lack them; the methods only need their shape then
        return torch.ones(num_classes, dtype=torch.long)
    counts = torch.as_tensor(counts)
    if counts.shape != (num_classes,):
        raise CheckpointError(f"{ckpt_path}: class_counts lists {counts.numel()} classes, the model {num_classes}")
    return counts


def load_denoiser(path: Union[str, Path], *, ema: bool = True, device: Union[str, torch.device] = "cpu"):
    """``(model, schedule)`` from a run folder or checkpoint; ``model(x_t, t, y)`` predicts the noise."""
    run = load_run(path, ema=ema, device=device)
    return run.model, run.schedule
