"""Shared end of the list-driven loaders (ImageNet-LT, Places-LT, iNaturalist 2018): decode once
at the resolution, cache, then cap / long tail / validate like every other dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import CbdmError
from ..interfaces import LabeledImages
from .common import finish
from .image_cache import cache_file, cached_images
from .options import DatasetOptions
from .square_images import ImageEntry, decode_entries

DEFAULT_SIZE = 64  # the resolution of the LT diffusion literature's ImageNet-LT experiments


def data_root(options: DatasetOptions, name: str, what: str, url: str) -> Path:
    """``options.root`` as an existing folder, or one line saying where to get the data
    (``url`` reads after "get": "them from https://...")."""
    if options.root is None:
        raise CbdmError(f"dataset {name} needs --data-root: a folder holding {what}; get {url}")
    root = Path(options.root).expanduser()
    if not root.is_dir():
        raise CbdmError(f"dataset {name}: data root {root} is not a folder; it must hold {what}; "
                        f"get {url}")
    if options.download:
        # Said plainly rather than ignored: these need an account or a manual step.
        raise CbdmError(f"dataset {name} cannot be downloaded by cbdm; get {url}")
    return root


def class_names_from(labels: Sequence[int], names: dict[int, str]) -> tuple[int, list[str]]:
    """``(num_classes, names)``: classes ``0..max(label)``, named from ``names`` or by number."""
    k = max(labels) + 1 if len(labels) else 0
    return k, [names.get(c, str(c)) for c in range(k)]


def load_listed(name: str, root: Path, entries: Sequence[ImageEntry], class_names: list[str],
                annotation: bytes, options: DatasetOptions, info: dict[str, Any]) -> LabeledImages:
    """The listed images at ``options.resize`` (default :data:`DEFAULT_SIZE`), decoded once and
    cached (keyed by the annotation file's bytes and the size), then finished as usual."""
    if not entries:
        raise CbdmError(f"dataset {name}: {info.get('list', 'the annotation file')} lists no images")
    size = options.resize or DEFAULT_SIZE
    labels = torch.tensor([e.label for e in entries], dtype=torch.long)
    # Named after the annotation file, so splits reading one file (inat test = val) share a cache.
    tag = Path(str(info.get("list", options.split))).stem
    path = cache_file(root, name, tag, size, annotation)
    images, hit = cached_images(path, labels, size, lambda: decode_entries(entries, size),
                                f"{name} {options.split}")
    full = {**info, "size": size, "cache": str(path), "from_cache": hit}
    return finish(images, labels, class_names, name, options, 1.0, full)
