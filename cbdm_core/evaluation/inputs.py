"""Reading the images to evaluate: a ``cbdm sample`` folder, a folder of image files
(labels from class sub-folders when present) or an ``.npz`` file."""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..errors import CbdmError
from ..sampling import shards as sh

# Files the evaluation itself writes into a sample folder: never read back as samples.
REPORT_FILES = frozenset({"per_class_fid.png"})


@dataclass
class SampleSet:
    """Images to evaluate.

    Attributes:
        images: ``uint8 [N, C, H, W]``.
        labels: ``int64 [N]`` class indices, or ``None`` when the source has no labels.
        source: the path read.
        kind: ``sample-folder``, ``image-folder`` or ``npz``.
        manifest: the ``cbdm sample`` manifest (sample folders only).
    """

    images: torch.Tensor
    labels: Optional[torch.Tensor]
    source: Path
    kind: str
    manifest: Optional[dict[str, Any]] = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def labeled(self) -> bool:
        return self.labels is not None


def _nhwc_to_tensor(images: np.ndarray, where: str) -> torch.Tensor:
    """``uint8 [N, H, W, C]`` (or ``[N, H, W]`` grayscale) -> ``uint8 [N, C, H, W]``."""
    if images.dtype != np.uint8:
        raise CbdmError(f"{where}: images must be uint8 (0..255), got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise CbdmError(f"{where}: images must be [N, H, W, C], got shape {tuple(images.shape)}")
    if images.shape[-1] not in (1, 3):
        raise CbdmError(f"{where}: images must have 1 or 3 channels (NHWC), got shape {tuple(images.shape)}")
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _labels_tensor(labels: np.ndarray, n: int, where: str) -> torch.Tensor:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise CbdmError(f"{where}: labels must be {n} integers, got {labels.dtype} {tuple(labels.shape)}")
    return torch.from_numpy(labels.astype(np.int64))


def read_npz(path: Path) -> SampleSet:
    """``images`` (uint8 NHWC) and optional ``labels`` from an ``.npz`` file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data.files:
                raise CbdmError(f"{path} has no 'images' array (found: {', '.join(data.files) or 'none'})")
            images = data["images"]
            labels = data["labels"] if "labels" in data.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CbdmError(f"{path} is not a readable .npz file ({exc})") from None
    tensor = _nhwc_to_tensor(images, str(path))
    return SampleSet(tensor, None if labels is None else _labels_tensor(labels, len(tensor), str(path)),
                     path, "npz")


def read_sample_folder(path: Path) -> SampleSet:
    """All shards of a complete ``cbdm sample`` folder."""
    manifest = sh.read_manifest(path)
    images, labels = sh.load_samples(path)
    # An unconditional model's samples carry the null label 0, which is no class.
    unconditional = (manifest or {}).get("class_names") == ["unconditional"]
    return SampleSet(_nhwc_to_tensor(images, str(path)), None if unconditional else torch.from_numpy(labels),
                     path, "sample-folder", manifest)


def _image_files(folder: Path) -> list[Path]:
    from ..data.folder import IMAGE_EXTS

    with os.scandir(folder) as it:
        names = sorted(e.name for e in it if e.is_file() and not e.name.startswith(".")
                       and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS and e.name not in REPORT_FILES)
    return [folder / n for n in names]


def _class_index(name: str, class_names: Optional[Sequence[str]], folder: Path) -> int:
    """A class sub-folder's class: its name among ``class_names``, else an integer index."""
    names = list(class_names or [])
    if name in names:
        return names.index(name)
    try:
        index = int(name)
    except ValueError:
        index = -1
    if index >= 0 and (not names or index < len(names)):
        return index
    choices = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    raise CbdmError(f"sample sub-folder {folder / name} is not a class: name it after a class "
                    f"({choices or 'no class names known'}) or a class index")


def _decode_all(files: list[Path]) -> list[np.ndarray]:
    from ..data.folder import _decode_many, reference_size

    # Sizes come from the headers first: an image of another size (or a decompression bomb) is
    # refused before it is decoded.
    ref = reference_size(files, square=False)
    arrays = _decode_many(files, workers=min(8, os.cpu_count() or 1), ref=ref)
    for p, a in zip(files, arrays):
        if isinstance(a, CbdmError):
            raise CbdmError(str(a).replace("dataset folder: image", "sample image", 1))
        if isinstance(a, Exception):
            raise CbdmError(f"cannot read sample image {p}: {type(a).__name__}: {a}")
    first = arrays[0]
    for p, a in zip(files, arrays):
        if a.shape[:2] != first.shape[:2]:
            raise CbdmError(f"sample image {p} is {a.shape[1]}x{a.shape[0]} but {files[0]} is "
                            f"{first.shape[1]}x{first.shape[0]}; all samples must have the same size")
    return arrays  # type: ignore[return-value]


def read_image_folder(path: Path, class_names: Optional[Sequence[str]] = None) -> SampleSet:
    """Image files in ``path`` (unlabelled) or in its class sub-folders (labelled).

    Sub-folders are matched to classes by name (``class_names``) or by integer index.
    """
    top = _image_files(path)
    with os.scandir(path) as it:
        subdirs = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    per_class = [(d, _image_files(path / d)) for d in subdirs]
    per_class = [(d, f) for d, f in per_class if f]
    if per_class and top:
        raise CbdmError(f"{path} holds image files both at the top and in sub-folders; put every sample "
                        "in a class sub-folder (labelled) or all at the top (unlabelled)")
    if not per_class and not top:
        raise CbdmError(f"no samples found in {path}: expected a `cbdm sample` folder ({sh.MANIFEST} and "
                        "shards), image files (png/jpg) or class sub-folders of them")
    files = top if top else [p for _, f in per_class for p in f]
    labels = None
    if per_class:
        labels = torch.cat([torch.full((len(f),), _class_index(d, class_names, path), dtype=torch.int64)
                            for d, f in per_class])
    arrays = _decode_all(files)
    if all(a.ndim == 2 for a in arrays):
        images = np.stack(arrays)[..., None]
    else:
        images = np.stack([np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays])
    return SampleSet(_nhwc_to_tensor(images, str(path)), labels, path, "image-folder")


def read_samples(path: Path, class_names: Optional[Sequence[str]] = None) -> SampleSet:
    """Read the samples at ``path``: ``.npz`` file, ``cbdm sample`` folder or image folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CbdmError(f"samples path {path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise CbdmError(f"samples path {path} is a file but not an .npz; give a .npz with 'images' "
                            "(uint8 NHWC, optional 'labels'), a `cbdm sample` folder or a folder of images")
        samples = read_npz(path)
    elif (path / sh.MANIFEST).exists():
        samples = read_sample_folder(path)
    elif any(path.glob(sh.SHARD_GLOB)):
        raise CbdmError(f"{path} holds sample shards but no {sh.MANIFEST}; it is not a complete sample folder")
    else:
        samples = read_image_folder(path, class_names)
    if len(samples) == 0:
        raise CbdmError(f"no samples found in {path}")
    return samples


def run_data_of(samples: Path) -> Optional[dict[str, Any]]:
    """The ``data`` section of the training config of the run that made ``samples`` (a
    ``cbdm sample`` folder whose manifest names a readable checkpoint), plus
    ``"checkpoint"``; ``None`` when the samples do not lead to one."""
    import json

    from ..checkpoint import read_metadata

    path = Path(samples).expanduser()
    manifest = sh.read_manifest(path) if path.is_dir() and (path / sh.MANIFEST).is_file() else None
    ckpt = ((manifest or {}).get("settings") or {}).get("checkpoint")
    if not ckpt or not Path(ckpt).is_file():
        return None
    try:
        data = json.loads(read_metadata(Path(ckpt)).get("config", "{}")).get("data") or {}
    except (CbdmError, ValueError):
        return None
    return {**data, "checkpoint": str(ckpt)} if data.get("dataset") else None
