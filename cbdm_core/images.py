"""Image conversions and grids."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_path


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Map floats in [-1, 1] to uint8 [0, 255] (rounding, clipping)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Map uint8 [0, 255] to floats in [-1, 1]."""
    return x.float() / 127.5 - 1.0


def grid_image(images: torch.Tensor, nrow: int, pad: int = 1, min_cell: int = 32,
               row_labels: Optional[Sequence[str]] = None) -> Image.Image:
    """A grid of ``images`` (uint8 ``[N, C, H, W]``), ``nrow`` images per row.

    Small images are enlarged (nearest) so that a cell is at least ``min_cell`` pixels.
    ``row_labels``: text drawn at the left of each row (a class name or index).
    """
    images = images.detach().cpu()
    n, c, h, w = images.shape
    scale = max(1, -(-min_cell // max(h, w)))
    if scale > 1:
        images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
        h, w = h * scale, w * scale
    ncol = max(1, nrow)
    rows = max(1, -(-n // ncol))
    canvas = torch.full((c, rows * (h + pad) + pad, ncol * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        canvas[:, y0:y0 + h, x0:x0 + w] = images[i]
    arr = canvas.permute(1, 2, 0).numpy()
    grid = Image.fromarray(arr[..., 0] if c == 1 else arr, mode="L" if c == 1 else "RGB")
    if row_labels:
        grid = _label_rows(grid, [str(t) for t in row_labels][:rows], row_height=h + pad, top=pad)
    return grid


LABEL_CHARS = 16  # longer class names are cut, so the label column stays narrow


def _label_rows(grid: Image.Image, labels: list[str], *, row_height: int, top: int) -> Image.Image:
    """``grid`` with a white column at its left holding one label per row, vertically centred.

    PIL's built-in bitmap font: no font file, nothing downloaded.
    """
    font = ImageFont.load_default()
    labels = [t if len(t) <= LABEL_CHARS else t[:LABEL_CHARS - 1] + "~" for t in labels]
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    boxes = [probe.textbbox((0, 0), t, font=font) for t in labels]
    width = max((b[2] - b[0] for b in boxes), default=0) + 8
    out = Image.new(grid.mode, (grid.width + width, grid.height), 255 if grid.mode == "L" else (255, 255, 255))
    out.paste(grid, (width, 0))
    draw = ImageDraw.Draw(out)
    ink = 0 if grid.mode == "L" else (0, 0, 0)
    for r, (text, box) in enumerate(zip(labels, boxes)):
        y = top + r * row_height + (row_height - (box[3] - box[1])) // 2 - box[1]
        draw.text((4 - box[0], y), text, fill=ink, font=font)
    return out


def save_png(img: Image.Image, path: Path) -> None:
    """Save atomically."""
    with atomic_path(Path(path)) as tmp:
        img.save(tmp, format="PNG")


def class_rows(images: torch.Tensor, labels: torch.Tensor, num_classes: int, per_class: int = 10) -> torch.Tensor:
    """Reorder into one row per class (first ``per_class`` images of each, blank-padded)."""
    c, h, w = images.shape[1:]
    rows = []
    for k in range(num_classes):
        sel = images[labels == k][:per_class]
        if len(sel) < per_class:
            sel = torch.cat([sel, torch.full((per_class - len(sel), c, h, w), 255, dtype=images.dtype)])
        rows.append(sel)
    return torch.cat(rows) if rows else images[:0]


def as_numpy_nhwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).contiguous().cpu().numpy()
