"""Per-class FID, KID, recall, coverage and conditional accuracy for long-tailed evaluation."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..errors import CbdmError
from ._common import ArrayLike, as_torch2d, check_same_dim, warn
from .fid import feature_statistics, frechet_distance
from .kid import kid
from ._common import InsufficientSamplesError
from .precision_recall import density_coverage, precision_recall


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


def conditional_accuracy(probs: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """One flag per sample: the feature classifier's most likely class is the requested one."""
    p = as_torch2d(probs, "probs")
    lab = _labels(labels, p.shape[0], "labels")
    return p.argmax(dim=1).cpu().numpy() == lab


def per_class_scores(real_feats: ArrayLike, real_labels: ArrayLike, fake_feats: ArrayLike,
                     fake_labels: ArrayLike, num_classes: int, *, k: int = 5, seed: int = 0,
                     kid_subsets: int = 100, kid_subset_size: int = 1000, fake_probs: Optional[ArrayLike] = None,
                     device: str | torch.device | None = None) -> dict[str, dict[int, Optional[float]]]:
    """Per class ``c``, the fake samples of ``c`` against the real samples of ``c``:

    * ``kid``: unbiased KID (its expectation does not depend on the sample count, unlike FID);
    * ``recall`` and ``coverage``: at equal set sizes (the real class subsampled, seeded);
    * ``accuracy`` (only with ``fake_probs`` over the ``num_classes`` classes): share of the
      samples the feature classifier assigns to ``c``.

    Returns ``{name: {class: value}}``; ``None`` where a class has too few samples (one
    warning lists them).
    """
    real = as_torch2d(real_feats, "real features", device=device)
    fake = as_torch2d(fake_feats, "fake features", device=device)
    check_same_dim(real, fake)
    rl = _labels(real_labels, real.shape[0], "real labels")
    fl = _labels(fake_labels, fake.shape[0], "fake labels")
    names = ["kid", "recall", "coverage"]
    correct = None
    if fake_probs is not None:
        correct = conditional_accuracy(fake_probs, fl)
        names.append("accuracy")
    out: dict[str, dict[int, Optional[float]]] = {n: {} for n in names}
    short: list[str] = []
    for c in range(num_classes):
        r_idx, f_idx = np.flatnonzero(rl == c), np.flatnonzero(fl == c)
        rc = real[torch.as_tensor(r_idx, device=real.device)]
        fc = fake[torch.as_tensor(f_idx, device=fake.device)]
        try:
            out["kid"][c] = kid(rc, fc, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed + c)[0]
        except InsufficientSamplesError:
            out["kid"][c] = None
        try:
            out["recall"][c] = precision_recall(rc, fc, k, seed=seed + c)[1]
            out["coverage"][c] = density_coverage(rc, fc, k, seed=seed + c)[1]
        except InsufficientSamplesError:
            out["recall"][c] = out["coverage"][c] = None
        if correct is not None:
            out["accuracy"][c] = float(correct[f_idx].mean()) if len(f_idx) else None
        if min(len(r_idx), len(f_idx)) <= k:
            short.append(f"{c} ({len(r_idx)} real, {len(f_idx)} fake)")
    if short:
        warn(f"per-class recall/coverage (k={k}) not computed for classes with at most {k} samples: "
             + ", ".join(short))
    return out
