"""Class re-sampling weights and the class-count table shown at training start."""

from __future__ import annotations

import torch
from rich.table import Table

from ..errors import CbdmError
from ..interfaces import LabeledImages

RESAMPLE_MODES = ("none", "balanced", "sqrt")


def class_sampling_weights(labels: torch.Tensor, mode: str, num_classes: int | None = None) -> torch.Tensor:
    """Per-example probabilities (float64, summing to 1) for drawing training examples.

    ``none``: every example equally likely (classes drawn as they occur, ``∝ n_c``);
    ``balanced``: every class equally likely (``w_i = 1 / n_c``);
    ``sqrt``: class ``c`` drawn ``∝ sqrt(n_c)`` (``w_i = 1 / sqrt(n_c)``).
    """
    if mode not in RESAMPLE_MODES:
        raise CbdmError(f"unknown re-sampling mode {mode!r}; choose one of: {', '.join(RESAMPLE_MODES)}")
    labels = torch.as_tensor(labels).long().cpu()
    if labels.numel() == 0:
        raise CbdmError("cannot compute sampling weights for an empty dataset")
    if int(labels.min()) < 0:
        raise CbdmError(f"labels must be >= 0, found {int(labels.min())}")
    counts = torch.bincount(labels, minlength=num_classes or 0).double()
    n = counts[labels]
    if mode == "none":
        w = torch.ones_like(n)
    elif mode == "balanced":
        w = 1.0 / n
    else:
        w = n.rsqrt()
    return w / w.sum()


def format_class_counts(ds: LabeledImages) -> Table:
    """A rich table with one row per class: index, name, count (and share of the set)."""
    counts = ds.class_counts.tolist()
    total = max(sum(counts), 1)
    nonzero = [c for c in counts if c > 0]
    ratio = f", imbalance {min(nonzero) / max(nonzero):.3g}" if nonzero else ""
    table = Table(title=ds.name or "dataset", caption=f"{sum(counts):,} images, {len(counts)} classes{ratio}")
    table.add_column("class", justify="right")
    table.add_column("name")
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    for i, (name, n) in enumerate(zip(ds.class_names, counts)):
        table.add_row(str(i), name, f"{n:,}", f"{100.0 * n / total:.1f}%")
    return table
