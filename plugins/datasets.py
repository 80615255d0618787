"""Built-in datasets components: ``(options: DatasetOptions) -> LabeledImages``."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

from cbdm_core.data.cifar import load_cifar
from cbdm_core.data.digits import load_digits
from cbdm_core.data.folder import load_folder
from cbdm_core.data.mnist import load_mnist, load_mnist_lt_small
from cbdm_core.hookspecs import hookimpl

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
}


@hookimpl
def register_components(register) -> None:
    for name, (loader, description) in DATASETS.items():
        register("dataset", name, loader, description=description)
