"""Sample shards and the manifest of a sample folder.

A sample folder holds ``shard-00000.npz``, ``shard-00001.npz``, ... (``images``:
uint8 ``[n, H, W, C]``, ``labels``: int64 ``[n]``), ``manifest.json`` and
``grid.png``. Shards are written atomically, so a shard file is either complete
or absent; that is what makes an interrupted run resumable.

With ``--format png`` the images are PNG files instead, one class folder each
(``<class>/000042.png``, named by sample index, like EDM's ``generate.py``); the
manifest then says ``"images": "png"`` and holds the labels run-length encoded.
The shard spans still group the work; a span is complete when all its files exist.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ..atomic import atomic_path, atomic_write_text
from ..errors import CbdmError

MANIFEST = "manifest.json"
GRID = "grid.png"
FORMAT = "cbdm-samples/1"
SHARD_GLOB = "shard-*.npz"


@dataclass(frozen=True)
class ShardSpan:
    """Shard ``index`` holds samples ``start .. start + count - 1``."""

    index: int
    start: int
    count: int

    @property
    def name(self) -> str:
        return shard_name(self.index)

    @property
    def stop(self) -> int:
        return self.start + self.count


def shard_name(index: int) -> str:
    return f"shard-{int(index):05d}.npz"


def shard_spans(num: int, shard_size: int) -> list[ShardSpan]:
    """Consecutive spans of at most ``shard_size`` samples covering ``0..num-1``."""
    if shard_size <= 0:
        raise CbdmError(f"shard size must be positive, got {shard_size}")
    return [ShardSpan(k, start, min(shard_size, num - start))
            for k, start in enumerate(range(0, int(num), int(shard_size)))]


def write_shard(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write one shard atomically (``images`` uint8 NHWC, ``labels`` int64)."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if images.ndim != 4 or len(images) != len(labels):
        raise CbdmError(f"a shard needs images [n, H, W, C] and n labels, got {images.shape} and {labels.shape}")
    with atomic_path(Path(path)) as tmp:
        # A file object: np.savez would append ".npz" to a path not ending in it.
        with open(tmp, "wb") as f:
            np.savez(f, images=images, labels=labels)


def read_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of a shard, or :class:`CbdmError` naming the file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels = data["images"], data["labels"]
    except FileNotFoundError:
        raise CbdmError(f"sample shard not found: {path}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CbdmError(f"sample shard {path} is unreadable ({exc}); delete it and re-run to regenerate it") from None
    if images.dtype != np.uint8 or images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
        raise CbdmError(f"sample shard {path} does not hold uint8 images [n, H, W, C] with n labels")
    return images, labels.astype(np.int64, copy=False)


def class_dirs(class_names: list[str]) -> list[str]:
    """A folder name per class: the class name when it is a safe, unique file name, else the index."""
    out = []
    for k, name in enumerate(class_names):
        safe = re.fullmatch(r"[A-Za-z0-9_.+-]+", str(name)) and not str(name).startswith(".")
        unique = list(class_names).count(name) == 1
        # A digit name must be its own index, or readers that take digits as indices would relabel it.
        digit_ok = not str(name).isdigit() or int(name) == k
        out.append(str(name) if safe and unique and digit_ok else str(k))
    return out


def png_path(folder: Path, class_dir: str, index: int) -> Path:
    return Path(folder) / class_dir / f"{int(index):06d}.png"


def write_png(path: Path, image: np.ndarray) -> None:
    """One uint8 HWC image as a PNG, atomically."""
    from PIL import Image

    from ..atomic import atomic_path

    arr = image[..., 0] if image.shape[-1] == 1 else image
    with atomic_path(Path(path)) as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")


def read_png(path: Path, shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """uint8 HWC image of a sample PNG, or :class:`CbdmError` naming the file. With ``shape``
    (``[H, W, ...]``, the manifest's) a PNG of another size is refused from its header, undecoded."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if shape is not None and tuple(im.size) != (int(shape[1]), int(shape[0])):
                raise CbdmError(f"sample image {path} is {im.size[0]}x{im.size[1]}, the manifest says "
                                f"{shape[1]}x{shape[0]}; delete it and re-run to regenerate it")
            arr = np.asarray(im)
    except FileNotFoundError:
        raise CbdmError(f"sample image not found: {path}; re-run the same `cbdm sample` command") from None
    except OSError as exc:
        raise CbdmError(f"sample image {path} is unreadable ({exc}); delete it and re-run to regenerate it") from None
    return arr[..., None] if arr.ndim == 2 else arr


def encode_labels(labels: np.ndarray) -> list[list[int]]:
    """``[[label, run_length], ...]``: compact in JSON for class-sorted labels."""
    out: list[list[int]] = []
    for v in np.asarray(labels).tolist():
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([int(v), 1])
    return out


def decode_labels(runs: list[list[int]]) -> np.ndarray:
    return np.concatenate([np.full(n, v, dtype=np.int64) for v, n in runs]) if runs else np.zeros(0, np.int64)


def read_png_span(folder: Path, manifest: dict[str, Any], start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of samples ``start .. start + count - 1`` of a PNG sample folder."""
    labels = decode_labels(manifest["labels"])[start:start + count]
    dirs = manifest["class_dirs"]
    shape = (manifest.get("settings") or {}).get("image_shape")
    images = np.stack([read_png(png_path(folder, dirs[int(y)], start + i), shape)
                       for i, y in enumerate(labels.tolist())])
    return images, labels


READ_HINT = "make the samples again with `cbdm sample ... --overwrite`"
WRITE_HINT = "use a new --out or --overwrite"


def read_manifest(folder: Path, hint: str = READ_HINT) -> Optional[dict[str, Any]]:
    """The manifest of a sample folder, ``None`` when there is none. ``hint``: what the one-line
    error of an unreadable one suggests (the reader's: make them again; ``cbdm sample``'s:
    :data:`WRITE_HINT`)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CbdmError(f"{path} is not a readable manifest ({exc}); {hint}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CbdmError(f"{path} is not a cbdm sample manifest; {hint}")
    return data


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    path = Path(folder) / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path


def settings_difference(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["sampler: ddim -> ddpm", ...]`` for every setting that differs."""
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            a, b = (json.dumps(d.get(key)) for d in (old, new))
            if len(a) > 40 or len(b) > 40:
                out.append(f"{key} differs")
            else:
                out.append(f"{key}: {a} -> {b}")
    return out


def clear_samples(folder: Path) -> None:
    """Remove the files a sample run writes (shards, manifest, grid); nothing else."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.glob(SHARD_GLOB):
        p.unlink(missing_ok=True)
    try:
        old = read_manifest(folder)
    except CbdmError:  # an unreadable manifest names no PNGs to remove
        old = None
    for d in (old or {}).get("class_dirs", []):  # only the PNGs this command wrote
        for p in (folder / d).glob("[0-9]*.png") if (folder / d).is_dir() else []:
            p.unlink(missing_ok=True)
    for name in (MANIFEST, GRID):
        (folder / name).unlink(missing_ok=True)


def iter_shards(folder: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(images, labels)`` of each shard of a COMPLETE sample folder, in order."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise CbdmError(f"{folder} holds no {MANIFEST}: not a sample folder (make one with `cbdm sample`)")
    if not manifest.get("complete"):
        raise CbdmError(f"the samples in {folder} are incomplete; re-run the same `cbdm sample` command to finish")
    for entry in manifest["shards"]:
        if manifest.get("images") == "png":
            yield read_png_span(folder, manifest, entry["start"], entry["count"])
            continue
        images, labels = read_shard(folder / entry["file"])
        if len(labels) != entry["count"]:
            raise CbdmError(f"sample shard {folder / entry['file']} holds {len(labels)} samples, "
                            f"the manifest says {entry['count']}")
        yield images, labels


def load_samples(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8 NHWC) and labels (int64) of a complete sample folder."""
    parts = list(iter_shards(folder))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
