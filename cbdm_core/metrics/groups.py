"""Head / medium / tail class groups: the one rule every report and plot uses.

Rule (the CIFAR-100-LT convention): head ("many-shot") classes have more than 100 training
images, tail ("few-shot") classes fewer than 20, medium the rest. When that leaves a group
empty (e.g. MNIST-LT, CIFAR-10-LT, the digits), the classes sorted by count are split into
thirds instead.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from ..errors import CbdmError
from ._common import ArrayLike

GROUPS: tuple[str, str, str] = ("head", "medium", "tail")
MANY_SHOT = 100  # head: more than this many training images
FEW_SHOT = 20  # tail: fewer than this many training images


def _counts(class_counts: ArrayLike | Sequence[int]) -> np.ndarray:
    counts = class_counts.detach().cpu().numpy() if isinstance(class_counts, torch.Tensor) \
        else np.asarray(class_counts)
    if counts.ndim != 1 or len(counts) < 3:
        raise CbdmError(f"head/medium/tail groups need counts for at least 3 classes, got shape {counts.shape}")
    return counts


def _by_thresholds(counts: np.ndarray) -> dict[str, list[int]]:
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    return {"head": [c for c in order if counts[c] > MANY_SHOT],
            "medium": [c for c in order if FEW_SHOT <= counts[c] <= MANY_SHOT],
            "tail": [c for c in order if counts[c] < FEW_SHOT]}


def _by_thirds(counts: np.ndarray) -> dict[str, list[int]]:
    """Thirds of the classes sorted by count, descending (ties: lower index first). With
    ``K = 3q + r`` classes head and tail get ``q`` each and medium the rest, except ``r == 2``
    where head and tail get one more each, so head and tail have equal size (10 -> 3/4/3)."""
    k = len(counts)
    order = sorted(range(k), key=lambda c: (-counts[c], c))
    q, r = divmod(k, 3)
    edge = q + (1 if r == 2 else 0)
    return {"head": order[:edge], "medium": order[edge:k - edge], "tail": order[k - edge:]}


def group_rule(class_counts: ArrayLike | Sequence[int]) -> str:
    """``"thresholds"`` (>100 / 20..100 / <20 images) or ``"thirds"`` (a threshold group was empty)."""
    return "thresholds" if all(_by_thresholds(_counts(class_counts)).values()) else "thirds"


def frequency_groups(class_counts: ArrayLike | Sequence[int]) -> dict[str, list[int]]:
    """Head / medium / tail classes by training frequency (see the module docstring); each
    group lists its classes by count, descending."""
    counts = _counts(class_counts)
    groups = _by_thresholds(counts)
    return groups if all(groups.values()) else _by_thirds(counts)


def describe_rule(class_counts: ArrayLike | Sequence[int]) -> str:
    """One line for reports: which rule made the groups."""
    if group_rule(class_counts) == "thresholds":
        return f"head > {MANY_SHOT}, medium {FEW_SHOT}..{MANY_SHOT}, tail < {FEW_SHOT} training images"
    return (f"thirds of the classes by training count (the > {MANY_SHOT} / < {FEW_SHOT} images rule "
            "leaves a group empty)")


def group_by_frequency(values: Mapping[int, float | None],
                       class_counts: ArrayLike | Sequence[int]) -> dict[str, float | None]:
    """Average of ``values`` over the head / medium / tail classes (see
    :func:`frequency_groups`). ``None`` values are skipped; a group with no value is ``None``."""
    out: dict[str, float | None] = {}
    for group, classes in frequency_groups(class_counts).items():
        vals = [values[c] for c in classes if values.get(c) is not None]
        out[group] = float(np.mean(vals)) if vals else None
    return out
