"""A sample folder's ``grid.png`` (the first images of each class, one row per class) and
its manifest marked complete."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import CbdmError
from ..images import class_rows, grid_image, save_png
from . import shards as sh
from .batches import plan_work


def finish_folder(out_dir: Path, manifest: dict[str, Any], labels_np: np.ndarray, spans: list,
                   dirs: Optional[list[str]], chw: tuple[int, int, int], C: int, grid_per_class: int,
                   counts: list[int], grid: Path) -> None:
    """Rank 0, after every rank wrote: the grid, and the manifest marked complete when it is."""
    settings = manifest["settings"]
    complete = all(len(w) == 0 for w in plan_work(out_dir, spans, labels_np, settings, dirs, None, False))
    _save_grid(grid, _grid_images(out_dir, manifest, spans, C, grid_per_class, counts), C,
               max(1, min(int(grid_per_class), max(counts))), chw, row_names(manifest, C))
    manifest["complete"] = complete
    sh.write_manifest(out_dir, manifest)


def _grid_images(out_dir: Path, manifest: dict[str, Any], spans: list, C: int, grid_per_class: int,
                 counts: list[int]) -> dict[int, list[np.ndarray]]:
    """The first images of each class, read back from the files (whichever rank wrote them)."""
    per_class = max(1, min(int(grid_per_class), max(counts)))
    grid: dict[int, list[np.ndarray]] = {k: [] for k in range(C)}
    png = manifest.get("images") == "png"
    for span in spans:
        if all(len(grid[k]) >= min(per_class, counts[k]) for k in range(C)):
            break
        try:
            if png:
                images, labels = sh.read_png_span(out_dir, manifest, span.start, span.count)
            else:
                images, labels = sh.read_shard(out_dir / span.name)
        except CbdmError:
            continue  # missing (a --seeds run on a new folder): the grid shows what exists
        for k in np.unique(labels).tolist():
            need = per_class - len(grid[k])
            if need > 0:
                grid[k].extend(images[labels == k][:need])
    return grid


def row_names(manifest: dict[str, Any], num_classes: int) -> list[str]:
    """The grid's row labels (one row per class): the run's class names, else the indices."""
    names = list(manifest.get("class_names") or [])
    return [str(names[k]) if k < len(names) else str(k) for k in range(num_classes)]


def _save_grid(path: Path, grid_imgs: dict[int, list[np.ndarray]], num_classes: int, per_class: int,
               chw: tuple[int, int, int], row_labels: Optional[list[str]] = None) -> None:
    imgs = [im for k in range(num_classes) for im in grid_imgs[k]]
    labs = [k for k in range(num_classes) for _ in grid_imgs[k]]
    if imgs:
        images = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)
    else:
        images = torch.zeros((0, *chw), dtype=torch.uint8)
    rows = class_rows(images, torch.tensor(labs, dtype=torch.long), num_classes, per_class)
    save_png(grid_image(rows, nrow=per_class, row_labels=row_labels), path)
