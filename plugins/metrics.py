"""Built-in metrics components: FID, IS, KID, improved precision/recall, PRD and
per-class FID, each a :class:`~cbdm_core.interfaces.MetricSpec` over two FeatureSets.

Every ``compute`` accepts the common keywords ``device``, ``num_classes`` and
``class_counts`` (ignored where not needed), so the evaluation engine can pass the
same context to all metrics, plus the metric's own options. Too few samples gives
``None`` values and a loud :class:`~cbdm_core.metrics.MetricWarning`; any other
problem raises ``CbdmError``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from cbdm_core.errors import CbdmError
from cbdm_core.features.base import FeatureSet
from cbdm_core.hookspecs import hookimpl
from cbdm_core.interfaces import MetricSpec
from cbdm_core.metrics import (
    InsufficientSamplesError,
    fid_from_features,
    group_by_frequency,
    inception_score,
    kid,
    per_class_fid,
    prd_fbeta,
    precision_recall,
)
from cbdm_core.metrics._common import warn

COMMON_OPTIONS = ("device", "num_classes", "class_counts")
Result = dict[str, Any]


def _check_options(metric: str, options: dict[str, Any], own: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(own) - set(COMMON_OPTIONS))
    if unknown:
        raise CbdmError(f"unknown option(s) for metric {metric!r}: {', '.join(unknown)}; "
                        f"available: {', '.join(own + COMMON_OPTIONS)}")


def _check_pair(metric: str, real: FeatureSet, fake: FeatureSet) -> None:
    if real.extractor and fake.extractor and real.extractor != fake.extractor:
        raise CbdmError(f"metric {metric!r}: real features come from {real.extractor!r} but fake "
                        f"features from {fake.extractor!r}")


def _guarded(metric: str, keys: tuple[str, ...], fn: Callable[[], Result]) -> Result:
    """Run ``fn``; too few samples turns into ``None`` values plus a warning."""
    try:
        return fn()
    except InsufficientSamplesError as e:
        warn(f"metric {metric!r} NOT COMPUTED: {e}")
        return {k: None for k in keys}


def _num_classes(options: dict[str, Any], *sets: FeatureSet) -> int | None:
    if options.get("num_classes") is not None:
        return int(options["num_classes"])
    labels = [s.labels for s in sets if s.labels is not None and len(s.labels) > 0]
    return int(max(int(lab.max()) for lab in labels)) + 1 if labels else None


def compute_fid(real: FeatureSet, fake: FeatureSet, **options: Any) -> Result:
    """``{"fid"}``: Fréchet distance of Gaussians fitted to the features."""
    _check_options("fid", options, ())
    _check_pair("fid", real, fake)
    return _guarded("fid", ("fid",), lambda: {"fid": fid_from_features(real.features, fake.features)})


def compute_is(real: FeatureSet, fake: FeatureSet, *, splits: int = 10, shuffle: bool = True,
               seed: int = 2020, **options: Any) -> Result:
    """``{"is", "is_std"}`` from the fake set's class probabilities (rows shuffled first)."""
    _check_options("is", options, ("splits", "shuffle", "seed"))
    if fake.probs is None:
        raise CbdmError(f"metric 'is' needs class probabilities, which extractor {fake.extractor!r} does not give")

    def run() -> Result:
        m, s = inception_score(fake.probs, splits=splits, shuffle=shuffle, seed=seed)
        return {"is": m, "is_std": s}

    return _guarded("is", ("is", "is_std"), run)


def compute_kid(real: FeatureSet, fake: FeatureSet, *, subsets: int = 100, subset_size: int = 1000,
                degree: int = 3, seed: int = 0, **options: Any) -> Result:
    """``{"kid", "kid_std"}``: unbiased polynomial-kernel MMD over random subsets."""
    _check_options("kid", options, ("subsets", "subset_size", "degree", "seed"))
    _check_pair("kid", real, fake)

    def run() -> Result:
        m, s = kid(real.features, fake.features, subsets=subsets, subset_size=subset_size,
                   degree=degree, seed=seed, device=options.get("device"))
        return {"kid": m, "kid_std": s}

    return _guarded("kid", ("kid", "kid_std"), run)


def compute_precision_recall(real: FeatureSet, fake: FeatureSet, *, k: int = 5, **options: Any) -> Result:
    """``{"precision", "recall"}``: improved precision/recall with k-NN radii."""
    _check_options("precision_recall", options, ("k",))
    _check_pair("precision_recall", real, fake)

    def run() -> Result:
        p, r = precision_recall(real.features, fake.features, k=k, device=options.get("device"))
        return {"precision": p, "recall": r}

    return _guarded("precision_recall", ("precision", "recall"), run)


def compute_prd(real: FeatureSet, fake: FeatureSet, *, num_clusters: int | None = None, beta: float = 8,
                num_angles: int = 1001, num_runs: int = 10, seed: int = 0, **options: Any) -> Result:
    """``{"f8", "f1_8"}`` (for beta 8; ``f{beta}`` / ``f1_{beta}`` otherwise): PRD F-scores.

    ``num_clusters`` defaults to 20 x the number of classes (``num_classes`` or the
    labels), or 20 when neither is known.
    """
    _check_options("prd", options, ("num_clusters", "beta", "num_angles", "num_runs", "seed"))
    _check_pair("prd", real, fake)
    if num_clusters is None:
        num_classes = _num_classes(options, real, fake)
        num_clusters = 20 * num_classes if num_classes else 20
    keys = (f"f{beta:g}", f"f1_{beta:g}")

    def run() -> Result:
        f_b, f_inv = prd_fbeta(real.features, fake.features, num_clusters, beta=beta,
                               num_angles=num_angles, num_runs=num_runs, seed=seed)
        return {keys[0]: f_b, keys[1]: f_inv}

    return _guarded("prd", keys, run)


def compute_per_class_fid(real: FeatureSet, fake: FeatureSet, **options: Any) -> Result:
    """``{"fid_class_<c>", "fid_class_mean", "fid_head", "fid_medium", "fid_tail"}``.

    Needs labels on both sets. Groups use ``class_counts`` (training frequencies) when
    given, else the real set's label counts.
    """
    _check_options("per_class_fid", options, ())
    _check_pair("per_class_fid", real, fake)
    if real.labels is None or fake.labels is None:
        raise CbdmError("metric 'per_class_fid' needs class labels on both the real and the fake features")
    num_classes = _num_classes(options, real, fake)
    if num_classes is None:
        raise CbdmError("metric 'per_class_fid' got empty label sets")
    values = per_class_fid(real.features, real.labels, fake.features, fake.labels, num_classes)
    out: Result = {f"fid_class_{c}": v for c, v in values.items()}
    known = [v for v in values.values() if v is not None]
    out["fid_class_mean"] = float(np.mean(known)) if known else None
    if num_classes >= 3:
        counts = options.get("class_counts")
        if counts is None:
            counts = torch.bincount(real.labels.to(torch.int64), minlength=num_classes)
        if len(counts) != num_classes:
            raise CbdmError(f"class_counts has {len(counts)} entries for {num_classes} classes")
        out.update({f"fid_{g}": v for g, v in group_by_frequency(values, counts).items()})
    return out


METRICS: dict[str, tuple[MetricSpec, str]] = {
    "fid": (MetricSpec(compute_fid), "Fréchet distance of feature Gaussians (FID with Inception features)"),
    "is": (MetricSpec(compute_is, needs_logits=True), "Inception Score from the extractor's class probabilities"),
    "kid": (MetricSpec(compute_kid), "Kernel distance: unbiased cubic-kernel MMD over subsets"),
    "precision_recall": (MetricSpec(compute_precision_recall),
                         "improved precision/recall, k-NN manifolds (Kynkäänniemi et al. 2019)"),
    "prd": (MetricSpec(compute_prd), "PRD F8 (recall-like) and F1/8 (precision-like) (Sajjadi et al. 2018)"),
    "per_class_fid": (MetricSpec(compute_per_class_fid), "FID per class and head/medium/tail averages"),
}


@hookimpl
def register_components(register) -> None:
    for name, (spec, description) in METRICS.items():
        register("metric", name, spec, description=description)
