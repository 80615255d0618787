"""EDM's dataset format (``dataset_tool.py``): a folder or zip of images with ``dataset.json``.

``dataset.json`` is ``{"labels": [["00000/img00000000.png", 6], ...]}`` (or ``"labels": null``
for an unconditional dataset). As in EDM's ``ImageFolderDataset``, the images are every file
with an image extension, sorted by path, and each must have a label.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

from ..errors import CbdmError
from ..interfaces import LabeledImages
from .common import finish
from .folder import GRAY_MODES, MAX_SIDE
from .options import DatasetOptions

EDM_URL = "https://github.com/NVlabs/edm (dataset_tool.py)"
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
WHAT = "an EDM dataset: a folder or .zip of images with dataset.json (made by EDM's dataset_tool.py)"


@contextlib.contextmanager
def _archive(root: Path) -> Iterator[tuple[list[str], Callable[[str], bytes]]]:
    """All file names (``/``-separated, relative) of the folder or zip, and a reader of one."""
    if root.is_dir():
        names = [Path(d, f).relative_to(root).as_posix()
                 for d, _, files in os.walk(root) for f in files]
        yield names, lambda n: (root / n).read_bytes()
        return
    try:
        zf = zipfile.ZipFile(root)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CbdmError(f"dataset edm: {root} is neither a folder nor a readable zip ({exc})") from None
    with zf:
        # Members are only read, never extracted: no member path can escape.
        yield [i.filename for i in zf.infolist() if not i.is_dir()], zf.read


def _labels(doc: Any, where: str) -> dict[str, int]:
    if not isinstance(doc, dict) or "labels" not in doc:
        raise CbdmError(f"{where}: expected {{\"labels\": [[filename, label], ...]}}")
    labels = doc["labels"]
    if labels is None:
        raise CbdmError(f"{where} has \"labels\": null (an unconditional dataset); class-conditional models "
                        "need a class label per image")
    out: dict[str, int] = {}
    for i, pair in enumerate(labels if isinstance(labels, list) else [None]):
        ok = isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
        if not ok or not isinstance(pair[1], int) or isinstance(pair[1], bool) or pair[1] < 0:
            raise CbdmError(f"{where}: labels[{i}] must be [filename, class index >= 0], got {str(pair)[:80]}")
        out[pair[0].replace("\\", "/")] = pair[1]
    return out


def _decode(data: bytes, where: str) -> np.ndarray:
    """``uint8 [H, W]`` (grayscale) or ``[H, W, 3]``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w != h or w > MAX_SIDE:
                raise CbdmError(f"{where} is {w}x{h}; EDM datasets hold square images of at most {MAX_SIDE} pixels")
            return np.asarray(im.convert("L" if im.mode in GRAY_MODES else "RGB"), dtype=np.uint8)
    except CbdmError:
        raise
    except Exception as exc:  # PIL raises many types for bad files
        raise CbdmError(f"{where}: cannot read the image ({type(exc).__name__}: {exc})") from None


def load_edm(options: DatasetOptions | None = None) -> LabeledImages:
    """An EDM-format dataset as uint8 ``[N, C, R, R]`` (C = 1 when every image is grayscale).

    There is one split (``train``); ``resize`` applies as for every dataset.
    """
    options = options or DatasetOptions()
    if options.root is None:
        raise CbdmError(f"dataset edm needs --data-root: {WHAT}")
    root = Path(options.root).expanduser()
    if not root.exists():
        raise CbdmError(f"dataset edm: {root} does not exist; expected {WHAT}")
    if options.split != "train":
        raise CbdmError(f"dataset edm: an EDM dataset has one split (train), not {options.split!r}")
    with _archive(root) as (names, read):
        if "dataset.json" not in names:
            raise CbdmError(f"dataset edm: {root} has no dataset.json; expected {WHAT}, see {EDM_URL}")
        try:
            doc = json.loads(read("dataset.json"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CbdmError(f"{root}/dataset.json is not valid JSON ({exc})") from None
        labels = _labels(doc, f"{root}/dataset.json")
        files = sorted(n for n in names if os.path.splitext(n)[1].lower() in IMAGE_EXTS)
        if not files:
            raise CbdmError(f"dataset edm: {root} holds no images")
        missing = [f for f in files if f not in labels]
        if missing:
            raise CbdmError(f"dataset edm: {root}/{missing[0]} has no label in dataset.json "
                            f"({len(missing)} image(s) without one)")
        images = _decode_all(root, files, read)
        y = torch.tensor([labels[f] for f in files], dtype=torch.long)
        class_names = [str(c) for c in range(int(y.max()) + 1)]
        return finish(images, y, class_names, "edm", options, 1.0, {"source": str(root)})


def _decode_all(root: Path, files: list[str], read: Callable[[str], bytes]) -> torch.Tensor:
    """``uint8 [N, C, R, R]``: every image the size of the first (EDM's datasets are uniform)."""
    arrays = [_decode(read(f), f"{root}/{f}") for f in files]
    first = arrays[0].shape[:2]
    for f, a in zip(files, arrays):
        if a.shape[:2] != first:
            raise CbdmError(f"dataset edm: {root}/{f} is {a.shape[1]}x{a.shape[0]} but {root}/{files[0]} is "
                            f"{first[1]}x{first[0]}; all images must have the same size")
    if all(a.ndim == 2 for a in arrays):
        return torch.from_numpy(np.stack(arrays)[:, None].copy())
    rgb = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    return torch.from_numpy(np.ascontiguousarray(np.stack(rgb).transpose(0, 3, 1, 2)))
