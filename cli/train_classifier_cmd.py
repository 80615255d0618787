"""``cbdm train-classifier --noisy RUN_OR_DATASET``: the noise-aware classifier p(y | x_t, t)
that classifier guidance (``--guidance-method classifier``) needs.

A top-level command, apart from ``cbdm eval train-classifier`` (the clean feature classifier
of the evaluation): this one learns noised images x_t at every timestep of a run's schedule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from cbdm_core.errors import CbdmError

from .minority_options import minority_options, save_scores


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
    from cbdm_core.build import resolve_device
    from cbdm_core.data.common import split_holdout
    from cbdm_core.guidance_classifier.net import save_noisy_classifier
    from cbdm_core.guidance_classifier.source import resolve_source
    from cbdm_core.guidance_classifier.train import accuracy_by_t, train_noisy_classifier

    if epochs < 1 or batch_size < 1 or bins < 1 or width < 4:
        raise CbdmError("--epochs, --batch-size and --bins must be positive and --width at least 4")
    check_writable(out, "classifier file")  # before training, not after
    src = resolve_source(source, data_root=data_root, schedule=schedule, T=T)
    dev = resolve_device(device)
    extra: dict = {}
    if minority:
        from cbdm_core.minority.labels import minority_dataset

        src.data, extra, scores = minority_dataset(src, device=dev, seed=seed, echo=click.echo, **minority_opts)
        click.echo(f"wrote {save_scores(out, scores, src.data.labels, extra)} (score per image, levels "
                   f"{extra['minority']['level_counts'][:3]}... images each)")
    train, test = split_holdout(src.data, holdout, seed)
    if len(test) == 0:
        raise CbdmError("nothing to hold out (every class has one image); the accuracy per t needs held-out images")
    counts = train.class_counts.tolist()
    click.echo(f"training on {len(train)} images of {src.record['dataset']}, {train.num_classes} classes "
               f"(counts {min(counts)}..{max(counts)}), {'balanced' if balanced else 'plain'} batches, "
               f"x_t from the {src.schedule.name} schedule (T={src.schedule.num_timesteps}), {epochs} epoch(s) on {dev}")
    model = train_noisy_classifier(train.images, train.labels, train.num_classes, src.schedule, epochs=epochs,
                                   batch_size=batch_size, lr=lr, balanced=balanced, seed=seed, device=dev,
                                   width=width, progress=lambda e, loss: click.echo(f"epoch {e + 1}/{epochs}: loss {loss:.4f}"))
    rows = accuracy_by_t(model, src.schedule, test.images, test.labels, bins=bins)
    click.echo(f"held-out accuracy per noise level ({len(test)} images; balanced = mean over classes):")
    for r in rows:
        click.echo(f"  t {r['t_lo']:>5}-{r['t_hi']:<5} accuracy {r['accuracy']:.3f}  balanced {r['balanced_accuracy']:.3f}")
    meta = {**model.meta, **src.record, "class_names": list(train.class_names), "class_counts": counts,
            "image_size": train.image_size, "channels": train.channels, "num_classes": train.num_classes,
            "holdout": holdout, "holdout_size": len(test), "accuracy_by_t": rows, **extra}
    save_noisy_classifier(model.cpu(), src.schedule, out, meta)
    click.echo(f"wrote {out}")
    method = "minority" if minority else "classifier"
    click.echo(f"next: cbdm sample RUN --guidance-method {method} -G classifier={out} -G scale=1")
