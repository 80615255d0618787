"""Statistics over training seeds: mean and standard deviation, and a paired bootstrap
interval for the difference of a method to the baseline."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof 1; ``None`` with one value) of ``n`` values."""

    mean: Optional[float]
    sd: Optional[float]
    n: int


def summarize(values: Sequence[Optional[float]]) -> Summary:
    """Mean ± sd of the finite values (missing ones skipped and not counted)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return Summary(None, None, 0)
    sd = float(np.std(xs, ddof=1)) if len(xs) > 1 else None
    return Summary(float(np.mean(xs)), sd, len(xs))


@dataclass(frozen=True)
class PairedDifference:
    """Mean of the per-seed differences ``method - baseline`` and its bootstrap interval."""

    mean: Optional[float]
    low: Optional[float]
    high: Optional[float]
    n: int
    level: float = 0.95


def paired_bootstrap(method: Sequence[Optional[float]], baseline: Sequence[Optional[float]], *,
                     level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> PairedDifference:
    """Percentile bootstrap interval of the mean paired difference over seeds.

    ``method[i]`` and ``baseline[i]`` come from the same training seed; pairs with a missing
    value are dropped. The seeds (not the images) are resampled with replacement, so the
    interval reflects run-to-run variation. With one pair the interval is that one difference
    (no spread can be estimated); the generator is seeded so reports are reproducible.
    """
    diffs = np.array([float(m) - float(b) for m, b in zip(method, baseline)
                      if m is not None and b is not None and math.isfinite(float(m)) and math.isfinite(float(b))])
    n = int(diffs.size)
    if n == 0:
        return PairedDifference(None, None, None, 0, level)
    mean = float(diffs.mean())
    if n == 1:
        return PairedDifference(mean, mean, mean, 1, level)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    means = diffs[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return PairedDifference(mean, float(low), float(high), n, level)
