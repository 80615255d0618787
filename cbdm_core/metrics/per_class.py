"""Per-class FID and head/medium/tail summaries for long-tailed evaluation."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from ..errors import CbdmError
from ._common import ArrayLike, as_torch2d, check_same_dim, warn
from .fid import feature_statistics, frechet_distance

GROUPS: tuple[str, str, str] = ("head", "medium", "tail")


def _labels(x: ArrayLike, n: int, name: str) -> np.ndarray:
    lab = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if lab.shape != (n,):
        raise CbdmError(f"{name} must have one label per sample ({n}), got shape {tuple(lab.shape)}")
    return lab.astype(np.int64)


def per_class_fid(real_feats: ArrayLike, real_labels: ArrayLike, fake_feats: ArrayLike,
                  fake_labels: ArrayLike, num_classes: int) -> dict[int, float | None]:
    """FID between the real and the fake features of each class.

    A class with fewer than 2 samples on either side gets ``None``; one warning lists
    such classes, another lists the classes whose covariance is rank-deficient
    (fewer samples than feature dimensions: values are biased upwards).
    """
    real = as_torch2d(real_feats, "real features", dtype=None)
    fake = as_torch2d(fake_feats, "fake features", dtype=None)
    check_same_dim(real, fake)
    rl = _labels(real_labels, real.shape[0], "real labels")
    fl = _labels(fake_labels, fake.shape[0], "fake labels")
    dim = real.shape[1]
    out: dict[int, float | None] = {}
    missing, deficient = [], []
    for c in range(num_classes):
        r_idx, f_idx = np.flatnonzero(rl == c), np.flatnonzero(fl == c)
        if len(r_idx) < 2 or len(f_idx) < 2:
            out[c] = None
            missing.append(f"{c} ({len(r_idx)} real, {len(f_idx)} fake)")
            continue
        if min(len(r_idx), len(f_idx)) < dim:
            deficient.append(c)
        mu1, s1 = feature_statistics(real[torch.as_tensor(r_idx, device=real.device)], warn_rank=False)
        mu2, s2 = feature_statistics(fake[torch.as_tensor(f_idx, device=fake.device)], warn_rank=False)
        out[c] = frechet_distance(mu1, s1, mu2, s2)
    if missing:
        warn("per-class FID not computed for classes with fewer than 2 samples: " + ", ".join(missing))
    if deficient:
        warn(f"per-class FID of classes {deficient} uses fewer samples than the {dim} feature "
             "dimensions: rank-deficient covariances, values are biased upwards")
    return out


def frequency_groups(class_counts: ArrayLike | Sequence[int]) -> dict[str, list[int]]:
    """Split classes into head / medium / tail thirds by training frequency.

    Classes are sorted by count, descending (ties: lower class index first). With
    ``K = 3q + r`` classes, head and tail get ``q`` classes each and medium the rest,
    except ``r == 2`` where head and tail get one extra each, so head and tail always
    have the same size: 10 -> 3/4/3, 11 -> 4/3/4, 100 -> 33/34/33.
    """
    counts = class_counts.detach().cpu().numpy() if isinstance(class_counts, torch.Tensor) \
        else np.asarray(class_counts)
    if counts.ndim != 1 or len(counts) < 3:
        raise CbdmError(f"head/medium/tail groups need counts for at least 3 classes, got shape {counts.shape}")
    k = len(counts)
    order = sorted(range(k), key=lambda c: (-counts[c], c))
    q, r = divmod(k, 3)
    edge = q + (1 if r == 2 else 0)
    return {"head": order[:edge], "medium": order[edge:k - edge], "tail": order[k - edge:]}


def group_by_frequency(values: Mapping[int, float | None],
                       class_counts: ArrayLike | Sequence[int]) -> dict[str, float | None]:
    """Average of ``values`` over the head / medium / tail classes (see
    :func:`frequency_groups`). ``None`` values are skipped; a group with no value is ``None``."""
    out: dict[str, float | None] = {}
    for group, classes in frequency_groups(class_counts).items():
        vals = [values[c] for c in classes if values.get(c) is not None]
        out[group] = float(np.mean(vals)) if vals else None
    return out
