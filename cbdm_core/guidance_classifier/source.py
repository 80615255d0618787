"""What ``cbdm train-classifier --noisy`` learns from: a run (its training data and noise
schedule) or a dataset (with a schedule chosen on the command line). The name given on the
command line is resolved by the CLI (``cli/train_classifier_cmd.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..interfaces import LabeledImages
from ..schedules import NoiseSchedule


@dataclass
class NoisySource:
    """Training images and the schedule x_t is drawn with, plus what to record about them."""

    data: LabeledImages
    schedule: NoiseSchedule
    record: dict[str, Any]
    model: Any = None  # the run's frozen denoiser (None for a dataset name): the minority score needs it


def run_source(path: Path, *, data_root: Optional[Path] = None) -> NoisySource:
    """A run folder or checkpoint: its training data, as configured (``data_root`` replaces the
    root), its schedule and its frozen denoiser."""
    from ..build import load_training_data
    from ..run import load_run

    run = load_run(path, device="cpu")
    cfg = run.config
    if data_root is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": data_root})})
    data = load_training_data(cfg)
    return NoisySource(data, run.schedule, {"source": str(path), "checkpoint": str(run.checkpoint),
                                            "dataset": cfg.data.dataset, "schedule": cfg.diffusion.schedule,
                                            "T": run.schedule.num_timesteps}, run.model)


def dataset_source(name: str, data: LabeledImages, schedule: NoiseSchedule, schedule_name: str,
                   T: int) -> NoisySource:
    """A dataset's train split ``data`` (registered as ``name``) noised with ``schedule`` (``T`` steps)."""
    return NoisySource(data, schedule, {"source": name, "dataset": name, "schedule": schedule_name, "T": int(T)})
