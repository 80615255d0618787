"""Long-tailed subsets of balanced datasets (the CIFAR-LT construction of Cao et al. 2019)."""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import CbdmError

LT_PROFILES = ("exp", "step")


def long_tail_counts(n_max: int, num_classes: int, imb_factor: float, kind: str = "exp") -> list[int]:
    """Images to keep per class.

    ``exp``: class ``c`` keeps ``int(n_max * imb_factor ** (c / (num_classes - 1)))``;
    ``step``: the first ``ceil(num_classes / 2)`` classes keep ``n_max``, the rest
    ``int(n_max * imb_factor)``. Counts never drop below 1 so no class disappears.
    CIFAR-10-LT (5000, 10, 0.01, "exp") gives 5000, 2997, 1796, ..., 83, 50.
    """
    if not (0.0 < imb_factor <= 1.0):
        raise CbdmError(f"imb_factor must be in (0, 1] (1 = no long tail), got {imb_factor}")
    if kind not in LT_PROFILES:
        raise CbdmError(f"unknown long-tail profile {kind!r}; choose one of: {', '.join(LT_PROFILES)}")
    if num_classes < 1:
        raise CbdmError(f"long tail needs at least one class, got {num_classes}")
    if n_max < 1:
        raise CbdmError(f"long tail needs n_max >= 1 image per class, got {n_max}")
    if kind == "exp":
        if num_classes == 1:
            return [n_max]
        raw = [int(n_max * imb_factor ** (c / (num_classes - 1))) for c in range(num_classes)]
    else:
        head = (num_classes + 1) // 2
        raw = [n_max] * head + [int(n_max * imb_factor)] * (num_classes - head)
    return [max(1, n) for n in raw]


def long_tail_indices(labels: torch.Tensor, counts: Sequence[int], seed: int) -> torch.Tensor:
    """Indices (ascending) of a seeded random subset with at most ``counts[c]`` examples of class ``c``.

    A class with fewer examples than requested keeps them all; a class with none is an error.
    """
    labels = torch.as_tensor(labels).long().cpu()
    num_classes = len(counts)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise CbdmError(
            f"labels must be in 0..{num_classes - 1} to match {num_classes} class counts, "
            f"found {int(labels.min())}..{int(labels.max())}"
        )
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.argsort(labels, stable=True)
    per_class = torch.bincount(labels, minlength=num_classes).tolist()
    kept: list[torch.Tensor] = []
    start = 0
    for c, (n, want) in enumerate(zip(per_class, counts)):
        if n == 0:
            raise CbdmError(f"class {c} has no images, so it cannot be part of a long-tailed set")
        idx = order[start:start + n]
        start += n
        # A random subset, not the first n: the stored order may be sorted by source or date.
        kept.append(idx[torch.randperm(n, generator=gen)[: max(0, int(want))]])
    return torch.sort(torch.cat(kept)).values


def make_long_tailed(
    images: torch.Tensor, labels: torch.Tensor, counts: Sequence[int], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep a seeded random ``counts[c]`` images of each class ``c`` (all of them if fewer).

    Returns ``(images, labels)`` in the original order.
    """
    if len(images) != len(labels):
        raise CbdmError(f"{len(images)} images but {len(labels)} labels")
    keep = long_tail_indices(labels, counts, seed)
    return images[keep.to(images.device)], labels[keep.to(labels.device)]
