"""The dataset's feature classifier trained on demand (``classifier: auto`` in ``cbdm compare``,
and training-time evaluation without a classifier file): once into a file, then reused."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch


def ensure_classifier(path: Path, dataset: str, root: Optional[Path], *, epochs: int,
                      device: torch.device | str = "cpu",
                      on_status: Optional[Callable[[str], None]] = None) -> Path:
    """``path``, training the feature classifier of ``dataset`` into it first when it does not
    exist: the training split with default options, class-balanced batches, seed 0 (small
    datasets; for large ones train one with ``cbdm eval train-classifier`` and pass the file).

    The global RNG state is left as it was, so a training run that calls this mid-way keeps
    its random streams.
    """
    path = Path(path)
    if path.is_file():
        return path
    from ..data import dataset_options, load_dataset
    from . import save_classifier, train_classifier

    train = load_dataset(dataset, dataset_options(root=root, split="train"))
    if on_status is not None:
        on_status(f"training the {dataset} feature classifier ({epochs} epochs) into {path}")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = train_classifier(train.images, train.labels, train.num_classes, epochs=epochs,
                                 balanced=True, seed=0, device=device)
    save_classifier(model, path, {"dataset": dataset, "class_names": train.class_names,
                                  "class_counts": train.class_counts.tolist()})
    return path


# Datasets whose images Inception was not made for (8x8 and 28x28 grey digits): `cbdm eval` and
# `cbdm sweep` measure them with the dataset's own classifier unless told otherwise. The
# classifier is small and trains in seconds (digits) to a minute or two (MNIST) on a CPU, and
# needs no download, so the quickstart works offline.
CLASSIFIER_DEFAULT: dict[str, int] = {"digits": 30, "digits-lt": 30, "mnist": 5, "mnist-lt": 5}  # name -> epochs


def default_extractor(dataset: str) -> str:
    """The extractor used when none is chosen: ``classifier`` for the digit datasets, else
    ``inception`` (the published FID protocol)."""
    return "classifier" if dataset in CLASSIFIER_DEFAULT else "inception"


def shared_classifier(dataset: str, root: Optional[Path], cache_dir: Path, *, device: torch.device | str = "cpu",
                      on_status: Optional[Callable[[str], None]] = None) -> Path:
    """The dataset's default feature classifier, trained once into
    ``<cache_dir>/classifiers/classifier-<dataset>.safetensors`` and shared by every run, so
    the numbers of two runs are measured with the same network."""
    path = Path(cache_dir).expanduser() / "classifiers" / f"classifier-{dataset}.safetensors"
    from ..atomic import ensure_dir

    ensure_dir(path.parent, "classifier folder")
    return ensure_classifier(path, dataset, root, epochs=CLASSIFIER_DEFAULT.get(dataset, 30), device=device,
                             on_status=on_status)
