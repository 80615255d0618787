"""Statistics of a method comparison (``cbdm compare``).

Seed level: mean ± sd over training seeds and, for every difference to the baseline, the
paired differences per seed with a t-interval (df = n - 1) and a paired t-test. Image level,
for rates (a share of images, such as memorisation or conditional accuracy): the
Cochran-Mantel-Haenszel test stratified by seed x class, and a two-stage bootstrap (seeds, then
images within each seed) of the difference of the pooled rates. Holm's correction over the
pre-registered primary tests. The tests themselves are scipy's and statsmodels'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

# Below this many seeds a seed-level interval rests on very few degrees of freedom (the t
# quantile at df = 2 is 4.3): the report says so.
FEW_SEEDS = 5


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof 1; ``None`` with one value) of ``n`` values."""

    mean: Optional[float]
    sd: Optional[float]
    n: int


def _finite(x: Optional[float]) -> bool:
    return x is not None and math.isfinite(float(x))


def summarize(values: Sequence[Optional[float]]) -> Summary:
    """Mean ± sd of the finite values (missing ones skipped and not counted)."""
    xs = [float(v) for v in values if _finite(v)]
    if not xs:
        return Summary(None, None, 0)
    sd = float(np.std(xs, ddof=1)) if len(xs) > 1 else None
    return Summary(float(np.mean(xs)), sd, len(xs))


@dataclass(frozen=True)
class PairedDifference:
    """The per-seed differences ``method - baseline`` (``None`` where either is missing), their
    mean, its t-interval and the paired t-test's two-sided p-value (``None`` below 2 pairs)."""

    per_seed: list[Optional[float]]
    mean: Optional[float]
    low: Optional[float]
    high: Optional[float]
    p: Optional[float]
    n: int
    level: float = 0.95


def t_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[Optional[float], Optional[float]]:
    """``mean ± t_{(1+level)/2, n-1} · sd / sqrt(n)``; ``(None, None)`` with fewer than 2 values."""
    from scipy import stats

    xs = np.asarray(diffs, dtype=np.float64)
    if xs.size < 2:
        return None, None
    half = float(stats.t.ppf((1.0 + level) / 2.0, xs.size - 1)) * float(np.std(xs, ddof=1)) / math.sqrt(xs.size)
    mean = float(xs.mean())
    return mean - half, mean + half


def paired_difference(method: Sequence[Optional[float]], baseline: Sequence[Optional[float]], *,
                      level: float = 0.95) -> PairedDifference:
    """Paired by training seed: ``method[i]`` and ``baseline[i]`` come from the same seed; a pair
    with a missing value is dropped from the mean, the interval and the test."""
    from scipy import stats

    per_seed = [float(m) - float(b) if _finite(m) and _finite(b) else None for m, b in zip(method, baseline)]
    diffs = [d for d in per_seed if d is not None]
    if not diffs:
        return PairedDifference(per_seed, None, None, None, None, 0, level)
    low, high = t_interval(diffs, level)
    p = None
    if len(diffs) >= 2:
        if np.std(diffs) == 0:  # identical differences: the t statistic is undefined
            p = 1.0 if diffs[0] == 0 else None
        else:
            p = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    return PairedDifference(per_seed, float(np.mean(diffs)), low, high, p, len(diffs), level)


@dataclass(frozen=True)
class StratifiedTest:
    """Cochran-Mantel-Haenszel test of ``odds ratio = 1`` over 2x2 tables; ``strata`` counts the
    tables that carry information (no zero margin), ``p`` is ``None`` when none does."""

    p: Optional[float]
    statistic: Optional[float]
    strata: int
    odds_ratio: Optional[float]


def cmh_test(tables: Sequence[Sequence[Sequence[float]]]) -> StratifiedTest:
    """CMH over 2x2 tables ``[[events_a, non_events_a], [events_b, non_events_b]]`` (one per stratum,
    e.g. seed x class), via ``statsmodels`` ``StratifiedTable.test_null_odds``.

    A table with a zero row or column margin (no images of one arm, or no event / no non-event
    at all) has zero variance under the null and contributes nothing to the statistic; it is
    left out, since statsmodels would divide by its zero total or margins.
    """
    from statsmodels.stats.contingency_tables import StratifiedTable

    kept = []
    for t in tables:
        a = np.asarray(t, dtype=np.float64).reshape(2, 2)
        if np.all(a.sum(axis=0) > 0) and np.all(a.sum(axis=1) > 0):
            kept.append(a)
    if not kept:
        return StratifiedTest(None, None, 0, None)
    st = StratifiedTable(np.stack(kept, axis=2))
    res = st.test_null_odds(correction=False)
    odds = st.oddsratio_pooled
    return StratifiedTest(float(res.pvalue), float(res.statistic), len(kept),
                          float(odds) if math.isfinite(odds) else None)


def two_stage_bootstrap(method: Sequence[np.ndarray], baseline: Sequence[np.ndarray], *,
                        resamples: int = 10_000, level: float = 0.95, seed: int = 0,
                        chunk: int = 1000) -> tuple[Optional[float], Optional[float]]:
    """Percentile interval of ``mean over seeds of (mean(method images) - mean(baseline images))``.

    ``method[i]`` and ``baseline[i]`` are the per-image values (e.g. 0/1 flags) of training seed
    ``i``. Each resample draws the seeds with replacement, then, for every drawn seed, that
    seed's images of each arm with replacement: the interval carries both the seed-to-seed and
    the within-seed (sampling) variation. Seeds with an empty arm are left out; ``(None, None)``
    when none is left. Seeded generator, so reports are reproducible.
    """
    pairs = [(np.asarray(m, dtype=np.float64), np.asarray(b, dtype=np.float64))
             for m, b in zip(method, baseline) if len(m) and len(b)]
    if not pairs:
        return None, None
    rng = np.random.default_rng(seed)
    k = len(pairs)
    stats = np.empty(resamples)
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        picks = rng.integers(0, k, size=(r, k))  # stage 1: seeds
        total = np.zeros(r)
        for slot in range(k):
            for i, (m, b) in enumerate(pairs):
                rows = np.flatnonzero(picks[:, slot] == i)
                if rows.size:  # stage 2: images within the drawn seed, each arm on its own
                    total[rows] += (m[rng.integers(0, m.size, (rows.size, m.size))].mean(axis=1)
                                    - b[rng.integers(0, b.size, (rows.size, b.size))].mean(axis=1))
        stats[start:start + r] = total / k
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def holm(pvalues: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Holm-adjusted p-values (``statsmodels`` ``multipletests(method="holm")``) over the given
    tests; a missing p-value stays missing and is not counted as a test."""
    from statsmodels.stats.multitest import multipletests

    known = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    out: list[Optional[float]] = [None] * len(pvalues)
    if known:
        adjusted = multipletests([pvalues[i] for i in known], method="holm")[1]
        for i, p in zip(known, adjusted):
            out[i] = float(p)
    return out
