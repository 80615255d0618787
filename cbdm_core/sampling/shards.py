"""Sample shards and the manifest of a sample folder.

A sample folder holds ``shard-00000.npz``, ``shard-00001.npz``, ... (``images``:
uint8 ``[n, H, W, C]``, ``labels``: int64 ``[n]``), ``manifest.json`` and
``grid.png``. Shards are written atomically, so a shard file is either complete
or absent; that is what makes an interrupted run resumable.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

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


def read_manifest(folder: Path) -> Optional[dict[str, Any]]:
    """The manifest of a sample folder, ``None`` when there is none."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CbdmError(f"{path} is not a readable manifest ({exc}); use a new --out or --overwrite") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CbdmError(f"{path} is not a cbdm sample manifest; use a new --out or --overwrite")
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
        images, labels = read_shard(folder / entry["file"])
        if len(labels) != entry["count"]:
            raise CbdmError(f"sample shard {folder / entry['file']} holds {len(labels)} samples, "
                            f"the manifest says {entry['count']}")
        yield images, labels


def load_samples(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8 NHWC) and labels (int64) of a complete sample folder."""
    parts = list(iter_shards(folder))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
