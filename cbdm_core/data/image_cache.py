"""Decoded, resized splits cached once as uint8 safetensors (content-hashed, atomic writes).

The cache key is the annotation file's bytes (split list or JSON) and the size: the images a
list names are decoded once per size. Replacing image files under an unchanged list is not
noticed: delete the cache folder then.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable

import torch

from ..errors import CbdmError
from ..tensor_io import load_tensors, save_tensors

log = logging.getLogger(__name__)

CACHE_ENV = "CBDM_DATA_CACHE"  # a cache folder for data roots that are read-only or shared
CACHE_DIRNAME = ".cbdm-cache"
CACHE_FORMAT = "cbdm-image-cache"
CACHE_VERSION = "1"  # bump when decoding changes (crop, resampling): old caches stop matching


def cache_folder(root: Path) -> Path:
    """``$CBDM_DATA_CACHE`` when set; else ``root/.cbdm-cache`` (next to the data) when it exists
    or ``root`` is writable; else ``data/`` in the project cache (``$CBDM_CACHE``, ``~/.cache/cbdm``),
    so a read-only shared ImageNet still gets a per-user cache."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    beside = root / CACHE_DIRNAME
    if beside.is_dir() or os.access(root, os.W_OK):
        return beside
    return Path(os.environ.get("CBDM_CACHE") or "~/.cache/cbdm").expanduser() / "data"


def cache_file(root: Path, dataset: str, tag: str, size: int, annotation: bytes) -> Path:
    """The cache file of ``dataset``'s split ``tag`` at ``size``, keyed by the annotation's bytes."""
    h = hashlib.sha256()
    h.update(f"{CACHE_FORMAT}/{CACHE_VERSION}/{size}/".encode())
    h.update(annotation)
    return cache_folder(root) / f"{dataset}-{tag}-{size}px-{h.hexdigest()[:16]}.safetensors"


def read_cache(path: Path, labels: torch.Tensor, size: int) -> torch.Tensor | None:
    """The cached images, or ``None`` when there is no cache or it is unusable (warned: it is
    then recomputed, never trusted)."""
    if not path.is_file():
        return None
    try:
        tensors, meta = load_tensors(path)  # checks the stored content hash
    except CbdmError as exc:
        log.warning("image cache %s is corrupt (%s); decoding the images again", path, exc)
        return None
    images, cached_labels = tensors.get("images"), tensors.get("labels")
    if (meta.get("format") != CACHE_FORMAT or images is None or cached_labels is None
            or images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, size, size)
            or not torch.equal(cached_labels, labels)):
        log.warning("image cache %s does not match its list (format, size or labels); decoding the images again",
                    path)
        return None
    return images


def write_cache(path: Path, images: torch.Tensor, labels: torch.Tensor, source: str) -> None:
    """Store the decoded split; a folder that cannot be written only costs a warning."""
    meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "source": source}
    try:
        save_tensors(path, {"images": images, "labels": labels}, meta)
    except CbdmError as exc:
        log.warning("cannot write the image cache (%s); set %s to a writable folder, or the images are "
                    "decoded again next time", exc, CACHE_ENV)


def cached_images(path: Path, labels: torch.Tensor, size: int, build: Callable[[], torch.Tensor],
                  source: str) -> tuple[torch.Tensor, bool]:
    """``(images, from_cache)``: the cache when it is valid, else ``build()`` (then cached)."""
    images = read_cache(path, labels, size)
    if images is not None:
        return images, True
    log.info("decoding %d images of %s at %dx%d once; cache: %s", len(labels), source, size, size, path)
    images = build()
    write_cache(path, images, labels, source)
    return images, False
