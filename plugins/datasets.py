"""Built-in datasets components: ``(options: DatasetOptions) -> LabeledImages``."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

from cbdm_core.data.cifar import load_cifar
from cbdm_core.data.digits import load_digits
from cbdm_core.data.edm_format import load_edm
from cbdm_core.data.folder import load_folder
from cbdm_core.data.inat import load_inat
from cbdm_core.data.mnist import load_mnist, load_mnist_lt_small
from cbdm_core.data.split_list import load_split_list
from cbdm_core.hookspecs import hookimpl

WITH_VAL = ("train", "val", "test")


def _with_splits(loader: Callable[..., Any], splits: tuple[str, ...]) -> Callable[..., Any]:
    """``loader`` marked with its splits (``load_dataset`` refuses the others)."""
    loader.splits = splits  # type: ignore[attr-defined]
    return loader


DATASETS: dict[str, tuple[Callable[..., Any], str]] = {
    "digits": (partial(load_digits, long_tail=False),
               "scikit-learn 8x8 digits, embedded (1x8x8, 10 classes, no download)"),
    "digits-lt": (partial(load_digits, long_tail=True),
                  "long-tailed digits train split (exp, default imb_factor 0.1)"),
    "mnist": (partial(load_mnist, long_tail=False), "MNIST from the idx files, padded to 1x32x32"),
    "mnist-lt": (partial(load_mnist, long_tail=True), "long-tailed MNIST train split (exp, default imb_factor 0.01)"),
    "mnist-lt-small": (load_mnist_lt_small,
                       "MNIST at 16x16 with digits-lt's long tail (147 ... 4 train images per class at 0.03)"),
    "cifar10": (partial(load_cifar, num_classes=10, long_tail=False), "CIFAR-10, official python pickles (3x32x32)"),
    "cifar10-lt": (partial(load_cifar, num_classes=10, long_tail=True),
                   "CIFAR-10-LT train split (exp, default imb_factor 0.01: 12,406 images)"),
    "cifar100": (partial(load_cifar, num_classes=100, long_tail=False),
                 "CIFAR-100 (fine labels), official python pickles (3x32x32)"),
    "cifar100-lt": (partial(load_cifar, num_classes=100, long_tail=True),
                    "CIFAR-100-LT train split (exp, default imb_factor 0.01: 10,847 images)"),
    "folder": (load_folder, "images in root/<class>/*.png|jpg|jpeg|bmp|webp (all the same size)"),
    "imagenet-lt": (_with_splits(partial(load_split_list, name="imagenet-lt"), WITH_VAL),
                    "ImageNet-LT (1000 classes) from the OLTR split lists; resize (default 64) cached once"),
    "places-lt": (_with_splits(partial(load_split_list, name="places-lt"), WITH_VAL),
                  "Places-LT (365 classes) from the OLTR split lists; resize (default 64) cached once"),
    "inat2018": (_with_splits(partial(load_inat), WITH_VAL),
                 "iNaturalist 2018 (8142 classes) from train2018.json / val2018.json; resize (default 64) cached"),
    "edm": (load_edm, "EDM's dataset format: a folder or zip with dataset.json labels (dataset_tool.py)"),
}


@hookimpl
def register_components(register) -> None:
    for name, (loader, description) in DATASETS.items():
        register("dataset", name, loader, description=description)
