"""``cbdm train-classifier --noisy RUN_OR_DATASET``: the noise-aware classifier p(y | x_t, t)
that classifier guidance (``--guidance-method classifier``) needs.

A top-level command, apart from ``cbdm eval train-classifier`` (the clean feature classifier
of the evaluation): this one learns noised images x_t at every timestep of a run's schedule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click
from pydantic import ValidationError

from cbdm_core.errors import CbdmError

from .minority_options import minority_options


@click.command("train-classifier")
@click.option("--noisy", "source", required=True, metavar="RUN_OR_DATASET",
              help="A run folder or checkpoint (its training data and noise schedule), or a dataset name.")
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Classifier file (.safetensors).")
@click.option("--data-root", type=click.Path(path_type=Path), help="Folder holding the dataset files.")
@click.option("--schedule", default="linear", show_default=True, help="Noise schedule for a dataset name (a run's own otherwise).")
@click.option("--T", "T", type=int, default=1000, show_default=True, help="Timesteps for a dataset name.")
@click.option("--balanced/--no-balanced", default=True, show_default=True,
              help="Class-balanced batches (the tail is what guidance needs it to know).")
@click.option("--epochs", type=int, default=50, show_default=True,
              help="Passes over the data (digits-lt: 533 images, 20 epochs took 11 s and 100 epochs 29 s on a busy 2-core CPU).")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Peak learning rate (AdamW, one-cycle).")
@click.option("--width", type=int, default=32, show_default=True, help="Channels of the network.")
@click.option("--holdout", type=float, default=0.1, show_default=True, help="Share of each class held out.")
@click.option("--bins", type=int, default=10, show_default=True, help="Noise levels (t ranges) the accuracy is reported for.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@minority_options
def train_classifier(source: str, out: Path, data_root: Optional[Path], schedule: str, T: int, balanced: bool,
                     epochs: int, batch_size: int, lr: float, width: int, holdout: float, bins: int, seed: int,
                     device: str, minority: bool, **minority_opts) -> None:
    """Train a noise-aware classifier for classifier guidance (or, with --minority, for minority
    guidance); prints its held-out accuracy per t range."""
    from cbdm_core.atomic import check_writable
    from cbdm_core.device import resolve_device
    from cbdm_core.guidance_classifier.make import NoisyClassifierJob, make_noisy_classifier

    if epochs < 1 or batch_size < 1 or bins < 1 or width < 4:
        raise CbdmError("--epochs, --batch-size and --bins must be positive and --width at least 4")
    check_writable(out, "classifier file")  # before training, not after
    src = resolve_source(source, data_root=data_root, schedule=schedule, T=T)
    fc = minority_opts.pop("feature_classifier", None)
    try:
        job = NoisyClassifierJob(minority=minority, balanced=balanced, epochs=epochs, batch_size=batch_size, lr=lr,
                                 width=width, holdout=holdout, bins=bins, seed=seed,
                                 feature_classifier=None if fc is None else str(fc), **minority_opts)
    except ValidationError as e:
        err = e.errors()[0]
        raise CbdmError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
    make_noisy_classifier(src, out, job, device=resolve_device(device), echo=click.echo)
    method = "minority" if minority else "classifier"
    run = source if Path(source).exists() else "RUN"  # a classifier from a dataset fits any run of that data
    click.echo(f"next: cbdm sample {run} --guidance-method {method} -G classifier={out} -G scale=1")


def resolve_source(source: str, *, data_root: Optional[Path] = None, schedule: str = "linear", T: int = 1000):
    """A run folder or checkpoint (its training data, as configured, and its schedule; ``schedule``
    and ``T`` are ignored), else a registered dataset name (its train split, with the
    ``schedule`` noise schedule of ``T`` steps): names resolved here, at the edge."""
    from cbdm_core.config import DiffusionConfig
    from cbdm_core.data import dataset_options, load_dataset
    from cbdm_core.guidance_classifier.source import dataset_source, run_source
    from cbdm_core.registry import get_registry

    path = Path(source)
    if path.exists():
        return run_source(path, data_root=data_root)
    reg = get_registry()
    if source not in reg.names("dataset"):
        raise CbdmError(f"--noisy {source!r} is neither a run folder/checkpoint nor a dataset; datasets: "
                        f"{', '.join(sorted(reg.names('dataset')))}")
    if T < 1:
        raise CbdmError(f"--T must be positive, got {T}")
    d = DiffusionConfig()  # the training defaults' betas
    sched = reg.get("noise_schedule", schedule).obj(int(T), beta_1=d.beta_1, beta_T=d.beta_T)
    data = load_dataset(source, dataset_options(root=data_root, split="train"))
    return dataset_source(source, data, sched, schedule, T)
