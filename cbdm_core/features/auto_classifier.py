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
    if _usable(path):
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


def _usable(path: Path) -> bool:
    """Whether ``path`` holds an intact classifier (hash-checked); a corrupt or unreadable
    one is a cache miss: it is trained again, with a warning."""
    if not path.is_file():
        return False
    from ..errors import CbdmError
    from .cache import cache_warning
    from .classifier_net import load_classifier

    try:
        load_classifier(path)
    except CbdmError as exc:
        cache_warning(f"ignoring bad classifier file ({exc}); training it again")
        return False
    return True
