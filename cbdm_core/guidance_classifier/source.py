"""What ``cbdm train-classifier --noisy`` learns from: a run (its training data and noise
schedule) or a dataset name (with a schedule chosen on the command line)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import CbdmError
from ..interfaces import LabeledImages
from ..schedules import NoiseSchedule


@dataclass
class NoisySource:
    """Training images and the schedule x_t is drawn with, plus what to record about them."""

    data: LabeledImages
    schedule: NoiseSchedule
    record: dict[str, Any]
    model: Any = None  # the run's frozen denoiser (None for a dataset name): the minority score needs it


def resolve_source(source: str, *, data_root: Optional[Path] = None, schedule: str = "linear",
                   T: int = 1000) -> NoisySource:
    """A run folder or checkpoint (its training data, as configured, and its schedule; ``schedule``
    and ``T`` are ignored), else a registered dataset name (its train split, with the
    ``schedule`` noise schedule of ``T`` steps)."""
    from ..build import load_training_data
    from ..registry import get_registry

    path = Path(source)
    if path.exists():
        from ..run import load_run

        run = load_run(path, device="cpu")
        cfg = run.config
        if data_root is not None:
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": data_root})})
        data = load_training_data(cfg)
        return NoisySource(data, run.schedule, {"source": str(path), "checkpoint": str(run.checkpoint),
                                                "dataset": cfg.data.dataset, "schedule": cfg.diffusion.schedule,
                                                "T": run.schedule.num_timesteps}, run.model)
    reg = get_registry()
    if source not in reg.names("dataset"):
        raise CbdmError(f"--noisy {source!r} is neither a run folder/checkpoint nor a dataset; datasets: "
                        f"{', '.join(sorted(reg.names('dataset')))}")
    if T < 1:
        raise CbdmError(f"--T must be positive, got {T}")
    from ..config import DiffusionConfig
    from ..data import dataset_options, load_dataset

    d = DiffusionConfig()  # the training defaults' betas
    factory = reg.get("noise_schedule", schedule).obj
    sched = factory(int(T), beta_1=d.beta_1, beta_T=d.beta_T)
    data = load_dataset(source, dataset_options(root=data_root, split="train"))
    return NoisySource(data, sched, {"source": source, "dataset": source, "schedule": schedule, "T": int(T)})
