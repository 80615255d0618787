"""CIFAR-10 / CIFAR-100 from the official python pickle layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CbdmError
from ..interfaces import LabeledImages
from .common import finish, require_root
from .download import download_file, safe_extract_tar
from .options import DatasetOptions
from .safe_pickle import safe_load

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR_LT_DEFAULT = 0.01


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its files and which keys hold labels and names."""

    folder: str
    tarball: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes


LAYOUTS = {
    10: CifarLayout("cifar-10-batches-py", "cifar-10-python.tar.gz",
                    tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                    "batches.meta", b"labels", b"label_names"),
    100: CifarLayout("cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",),
                     "meta", b"fine_labels", b"fine_label_names"),
}


def find_cifar_dir(root: Path, layout: CifarLayout) -> Path | None:
    """``root/<folder>`` or ``root`` itself when it already is that folder."""
    for d in (root / layout.folder, root):
        if (d / layout.meta_file).is_file():
            return d
    return None


def _download(root: Path, layout: CifarLayout) -> None:
    archive = root / layout.tarball
    if not archive.is_file():
        download_file(CIFAR_URL + layout.tarball, archive, timeout=60.0)
    safe_extract_tar(archive, root)


def _as_str(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, (bytes, bytearray)) else str(x)


def read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One pickle batch -> ``(uint8 [N, 3, 32, 32], int64 [N])``, validated."""
    if not path.is_file():
        raise CbdmError(f"CIFAR file {path} is missing")
    d = safe_load(path)
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        raise CbdmError(f"{path} is not a CIFAR batch: expected a dict with b'data' and {label_key!r}")
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CbdmError(f"{path}: b'data' must be uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
    if labels.shape != (data.shape[0],):
        raise CbdmError(f"{path}: {data.shape[0]} images but {labels.size} labels")
    # Rows are channel-major (1024 R, 1024 G, 1024 B) of a 32x32 image.
    return data.reshape(-1, 3, 32, 32), labels


def read_names(path: Path, names_key: bytes, num_classes: int) -> list[str]:
    """Class names from ``batches.meta`` / ``meta``."""
    if not path.is_file():
        raise CbdmError(f"CIFAR file {path} is missing")
    meta = safe_load(path)
    if not isinstance(meta, dict) or names_key not in meta:
        raise CbdmError(f"{path} is not a CIFAR meta file: no {names_key!r}")
    names = [_as_str(n) for n in meta[names_key]]
    if len(names) != num_classes:
        raise CbdmError(f"{path}: {len(names)} class names, expected {num_classes}")
    return names


def load_cifar(options: DatasetOptions | None = None, *, num_classes: int = 10,
               long_tail: bool = False) -> LabeledImages:
    """CIFAR-10 (``num_classes=10``) or CIFAR-100 (fine labels) as uint8 ``[N, 3, 32, 32]``.

    ``long_tail=True`` defaults to ``imb_factor=0.01`` (exp profile) on the train split;
    ``lt_seed`` picks which images are kept.
    """
    if num_classes not in LAYOUTS:
        raise CbdmError(f"CIFAR has 10 or 100 classes, not {num_classes}")
    options = options or DatasetOptions()
    layout = LAYOUTS[num_classes]
    name = f"cifar{num_classes}" + ("-lt" if long_tail else "")
    what = f"{layout.folder}/ (the official python version, or use --download)"
    root = require_root(options, name, what)
    folder = find_cifar_dir(root, layout)
    if folder is None and options.download:
        _download(root, layout)
        folder = find_cifar_dir(root, layout)
    if folder is None:
        raise CbdmError(f"dataset {name}: {root / layout.folder / layout.meta_file} not found; expected {what}")
    files = layout.train_files if options.split == "train" else layout.test_files
    parts = [read_batch(folder / f, layout.label_key) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    names = read_names(folder / layout.meta_file, layout.names_key, num_classes)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CbdmError(f"dataset {name}: labels must be in 0..{num_classes - 1}, "
                        f"found {int(labels.min())}..{int(labels.max())} in {folder}")
    return finish(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(labels),
        names,
        name,
        options,
        CIFAR_LT_DEFAULT if long_tail else 1.0,
        {"source": str(folder)},
    )
