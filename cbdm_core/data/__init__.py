"""Datasets, long-tail construction, re-sampling weights and augmentations."""

from __future__ import annotations

from typing import Any, Optional

from ..errors import CbdmError
from ..interfaces import LabeledImages
from .augment import Augmentation, DiffAugment, NoAugment, NonLeakingAugment, RandomFlip
from .common import check_labeled
from .long_tail import long_tail_counts, long_tail_indices, make_long_tailed
from .options import DatasetOptions, dataset_options
from .resample import RESAMPLE_MODES, class_sampling_weights, format_class_counts


def open_dataset(loader: Any, name: str, options: Optional[DatasetOptions] = None) -> LabeledImages:
    """Load dataset ``name`` with its factory ``loader`` (resolved at the edge), refusing a
    split the loader does not have."""
    options = options or DatasetOptions()
    splits = getattr(loader, "splits", ("train", "test"))
    if options.split not in splits:
        # Loaders without a val split would silently read another one.
        raise CbdmError(f"dataset {name} has no {options.split} split (it has {', '.join(splits)})")
    return loader(options)


def load_dataset(name: str, options: DatasetOptions | None = None) -> LabeledImages:
    """Load the registered dataset ``name`` (``digits``, ``cifar10-lt``, ``folder``, ...)."""
    from ..registry import lookup  # late: the registry imports plugins, which import us

    return open_dataset(lookup("dataset", name), name, options)


__all__ = [
    "Augmentation",
    "DatasetOptions",
    "DiffAugment",
    "LabeledImages",
    "NoAugment",
    "NonLeakingAugment",
    "RESAMPLE_MODES",
    "RandomFlip",
    "check_labeled",
    "class_sampling_weights",
    "dataset_options",
    "format_class_counts",
    "load_dataset",
    "long_tail_counts",
    "long_tail_indices",
    "make_long_tailed",
    "open_dataset",
]
