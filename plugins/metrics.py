"""Built-in metrics components: FID, IS, KID, improved precision/recall, density/coverage,
PRD, per-class FID, per-class KID/recall/coverage/accuracy and memorisation, each a
:class:`~cbdm_core.interfaces.MetricSpec` over two FeatureSets that declares its values and
which way each improves.

Every ``compute`` accepts the common keywords ``device``, ``num_classes`` and
``class_counts`` (ignored where not needed), so the evaluation engine can pass the
same context to all metrics, plus the context keywords its spec lists and the metric's own
options. Too few samples gives ``None`` values and a loud
:class:`~cbdm_core.metrics.MetricWarning`; any other problem raises ``CbdmError``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from cbdm_core.errors import CbdmError
from cbdm_core.features.base import FeatureSet
from cbdm_core.hookspecs import hookimpl
from cbdm_core.interfaces import METRIC_CONTEXT, Direction, MetricSpec, MetricValues
from cbdm_core.metrics import (
    GROUPS,
    InsufficientSamplesError,
    TrainingReference,
    density_coverage_n,
    fid_from_features,
    frequency_groups,
    group_by_frequency,
    inception_score,
    kid,
    nearest_training,
    per_class_fid,
    per_class_scores,
    prd_fbeta,
    precision_recall_n,
)
from cbdm_core.metrics._common import warn

LOWER, HIGHER, NEITHER = Direction.LOWER, Direction.HIGHER, Direction.NEITHER
COMMON_OPTIONS = ("device", "num_classes", "class_counts", *METRIC_CONTEXT)
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


def compute_is(real: FeatureSet, fake: FeatureSet, *, splits: int = 10, seed: int = 2020,
               **options: Any) -> Result:
    """``{"is", "is_std"}`` from the fake set's class probabilities (independent of their order)."""
    _check_options("is", options, ("splits", "seed"))
    if fake.probs is None:
        raise CbdmError(f"metric 'is' needs class probabilities, which extractor {fake.extractor!r} does not give")

    def run() -> Result:
        m, s = inception_score(fake.probs, splits=splits, seed=seed)
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


def _knn_pair(metric: str, keys: tuple[str, str, str], compute: Callable[..., tuple[float, float, int]],
              real: FeatureSet, fake: FeatureSet, k: int, seed: int, options: dict[str, Any]) -> Result:
    """A k-NN metric pair at equal set sizes: ``{keys[0], keys[1], keys[2]: n}``."""
    _check_options(metric, options, ("k", "seed"))
    _check_pair(metric, real, fake)

    def run() -> Result:
        a, b, n = compute(real.features, fake.features, k, seed=seed, device=options.get("device"),
                          radii_cache=options.get("radii_cache"))
        return {keys[0]: a, keys[1]: b, keys[2]: float(n)}

    return _guarded(metric, keys, run)


def compute_precision_recall(real: FeatureSet, fake: FeatureSet, *, k: int = 5, seed: int = 0,
                             **options: Any) -> Result:
    """``{"precision", "recall", "pr_n"}``: improved precision/recall at equal set sizes ``pr_n``."""
    return _knn_pair("precision_recall", ("precision", "recall", "pr_n"), precision_recall_n,
                     real, fake, k, seed, options)


def compute_density_coverage(real: FeatureSet, fake: FeatureSet, *, k: int = 5, seed: int = 0,
                             **options: Any) -> Result:
    """``{"density", "coverage", "dc_n"}`` (Naeem et al. 2020) at equal set sizes ``dc_n``."""
    return _knn_pair("density_coverage", ("density", "coverage", "dc_n"), density_coverage_n,
                     real, fake, k, seed, options)


def compute_prd(real: FeatureSet, fake: FeatureSet, *, num_clusters: int | None = None, beta: float = 8,
                num_angles: int = 1001, num_runs: int = 10, seed: int = 0, **options: Any) -> Result:
    """``{"f8", "f1_8", "prd_n"}`` (for beta 8; ``f{beta}`` / ``f1_{beta}`` otherwise): PRD F-scores
    at equal set sizes ``prd_n``.

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
        return {keys[0]: f_b, keys[1]: f_inv, "prd_n": float(min(len(real), len(fake)))}

    return _guarded("prd", (*keys, "prd_n"), run)


def _labelled(metric: str, real: FeatureSet, fake: FeatureSet, options: dict[str, Any]) -> int:
    """The number of classes; both sets must carry labels."""
    if real.labels is None or fake.labels is None:
        raise CbdmError(f"metric {metric!r} needs class labels on both the real and the fake features")
    num_classes = _num_classes(options, real, fake)
    if num_classes is None:
        raise CbdmError(f"metric {metric!r} got empty label sets")
    return num_classes


def _group_counts(options: dict[str, Any], labels: Optional[torch.Tensor], num_classes: int) -> Optional[Any]:
    """Training class counts for the groups (``class_counts``, else the real set's labels)."""
    if num_classes < 3:
        return None
    counts = options.get("class_counts")
    if counts is None and labels is not None:
        counts = torch.bincount(labels.to(torch.int64), minlength=num_classes)
    if counts is not None and len(counts) != num_classes:
        raise CbdmError(f"class_counts has {len(counts)} entries for {num_classes} classes")
    return counts


def _per_class_values(name: str, values: dict[int, Optional[float]], counts: Optional[Any]) -> Result:
    """``<name>_class_<c>``, ``<name>_class_mean`` and ``<name>_<group>`` (mean over the group's classes)."""
    out: Result = {f"{name}_class_{c}": v for c, v in values.items()}
    known = [v for v in values.values() if v is not None]
    out[f"{name}_class_mean"] = float(np.mean(known)) if known else None
    if counts is not None:
        out.update({f"{name}_{g}": v for g, v in group_by_frequency(values, counts).items()})
    return out


def compute_per_class_fid(real: FeatureSet, fake: FeatureSet, **options: Any) -> Result:
    """``{"fid_class_<c>", "fid_class_mean", "fid_head", "fid_medium", "fid_tail"}``.

    Needs labels on both sets. Groups use ``class_counts`` (training frequencies) when
    given, else the real set's label counts.
    """
    _check_options("per_class_fid", options, ())
    _check_pair("per_class_fid", real, fake)
    num_classes = _labelled("per_class_fid", real, fake, options)
    values = per_class_fid(real.features, real.labels, fake.features, fake.labels, num_classes)
    return _per_class_values("fid", values, _group_counts(options, real.labels, num_classes))


def compute_per_class(real: FeatureSet, fake: FeatureSet, *, k: int = 5, seed: int = 0, kid_subsets: int = 100,
                      kid_subset_size: int = 1000, **options: Any) -> Result:
    """Per class: ``kid_class_<c>``, ``recall_class_<c>``, ``coverage_class_<c>`` and, when the
    extractor classifies into the dataset's classes, ``accuracy_class_<c>`` (conditional
    accuracy) plus ``accuracy`` over all samples; each with ``_class_mean`` and group means."""
    _check_options("per_class", options, ("k", "seed", "kid_subsets", "kid_subset_size"))
    _check_pair("per_class", real, fake)
    num_classes = _labelled("per_class", real, fake, options)
    probs = fake.probs if fake.probs is not None and fake.probs.shape[1] == num_classes else None
    scores = per_class_scores(real.features, real.labels, fake.features, fake.labels, num_classes, k=k, seed=seed,
                              kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, fake_probs=probs,
                              device=options.get("device"))
    counts = _group_counts(options, real.labels, num_classes)
    out = MetricValues()
    for name, values in scores.items():
        out.update(_per_class_values(name, values, counts))
    if probs is not None:
        confidence, predicted = probs.max(dim=1)
        out["accuracy"] = float((predicted == fake.labels.to(probs.device)).double().mean())
        # the predictions conditional accuracy counts, one per sample (records.csv)
        out.per_sample = {"predicted_class": predicted.cpu().numpy(), "confidence": confidence.double().cpu().numpy()}
    return out


def compute_memorization(real: FeatureSet, fake: FeatureSet, *, threshold: float = 1.0 / 3.0,
                         training: Optional[TrainingReference] = None, fake_images: Optional[torch.Tensor] = None,
                         **options: Any) -> Result:
    """Share of samples whose nearest training image is less than ``threshold`` times as far as
    the second-nearest: ``memorization_pixels`` and ``memorization_features``, per class
    (``..._class_<c>``) and per group (pooled over the group's samples) when labelled."""
    _check_options("memorization", options, ("threshold",))
    if training is None or fake_images is None:
        raise CbdmError("metric 'memorization' needs the training set and the generated images (the "
                        "evaluation passes them; in Python give training= and fake_images=)")
    if tuple(fake_images.shape[1:]) != tuple(training.images.shape[1:]):
        raise CbdmError(f"memorization: samples are {tuple(fake_images.shape[1:])} but the training images "
                        f"{tuple(training.images.shape[1:])} (CxHxW)")
    device = options.get("device")
    near = {
        "pixels": nearest_training(fake_images.flatten(1).float(), training.images.flatten(1).float(),
                                   threshold=threshold, device=device),
        "features": nearest_training(fake.features, training.features, threshold=threshold, device=device),
    }
    flags = {space: n.memorized for space, n in near.items()}
    out = MetricValues({f"memorization_{space}": float(f.mean()) for space, f in flags.items()})
    for space, n in near.items():  # what each flag was decided from (records.csv)
        out.per_sample.update({f"d1_{space}": n.d1, f"d2_{space}": n.d2, f"nn_train_index_{space}": n.nearest,
                               f"memorized_{space}": n.memorized.astype(np.int64)})
    out["memorization_train_n"] = float(len(training.labels))
    if fake.labels is None:
        return out
    labels = fake.labels.cpu().numpy()
    num_classes = _num_classes(options, fake) or 0
    counts = options.get("class_counts")
    if counts is None:
        counts = torch.bincount(training.labels.to(torch.int64), minlength=num_classes)
    groups = frequency_groups(counts) if num_classes >= 3 else {}
    for space, f in flags.items():
        for c in range(num_classes):
            mask = labels == c
            out[f"memorization_{space}_class_{c}"] = float(f[mask].mean()) if mask.any() else None
        for g in GROUPS:
            mask = np.isin(labels, groups.get(g, []))
            if g in groups:
                out[f"memorization_{space}_{g}"] = float(f[mask].mean()) if mask.any() else None
    return out


# -- user-settable options (cbdm eval -O metric.key=value), validated before any work ---------


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoOptions(_Options):
    """The metric takes no options."""


class ISOptions(_Options):
    """``splits``: groups the IS is averaged over; ``seed``: the permutation before splitting."""

    splits: int = Field(10, ge=1)
    seed: int = 2020


class KIDOptions(_Options):
    """Random subsets of ``subset_size`` rows, a polynomial kernel of ``degree``."""

    subsets: int = Field(100, ge=1)
    subset_size: int = Field(1000, ge=2)
    degree: int = Field(3, ge=1)
    seed: int = 0


class KNNOptions(_Options):
    """``k`` nearest neighbours; ``seed`` of the subsample that equalises the set sizes."""

    k: int = Field(5, ge=1)
    seed: int = 0


class PRDOptions(_Options):
    """PRD (Sajjadi et al. 2018): clusters (default 20 per class), beta, angles, runs, seed."""

    num_clusters: Optional[int] = Field(None, ge=1)
    beta: float = Field(8.0, gt=0)
    num_angles: int = Field(1001, ge=3)
    num_runs: int = Field(10, ge=1)
    seed: int = 0


class PerClassOptions(KNNOptions):
    """Per-class recall/coverage (``k``, ``seed``) and per-class KID subsets."""

    kid_subsets: int = Field(100, ge=1)
    kid_subset_size: int = Field(1000, ge=2)


class MemorizationOptions(_Options):
    """A sample is memorised when d1/d2 < ``threshold`` (Yoon et al. 2023: 1/3)."""

    threshold: float = Field(1.0 / 3.0, gt=0, le=1)


def _grouped(prefix: str, direction: Direction) -> dict[str, Direction]:
    """Declared values of a per-class family: per class, mean and the three groups."""
    return {f"{prefix}_class_*": direction, **{f"{prefix}_{g}": direction for g in GROUPS}}


METRICS: dict[str, tuple[MetricSpec, str]] = {
    "fid": (MetricSpec(compute_fid, options_model=NoOptions, values={"fid": LOWER}),
            "Fréchet distance of feature Gaussians (FID with Inception features)"),
    "is": (MetricSpec(compute_is, needs_logits=True, options_model=ISOptions, values={"is": HIGHER, "is_std": NEITHER}),
           "Inception Score from the extractor's class probabilities"),
    "kid": (MetricSpec(compute_kid, options_model=KIDOptions, values={"kid": LOWER, "kid_std": NEITHER}),
            "Kernel distance: unbiased cubic-kernel MMD over subsets"),
    "precision_recall": (MetricSpec(compute_precision_recall, context=("radii_cache",), options_model=KNNOptions,
                                    values={"precision": HIGHER, "recall": HIGHER, "pr_n": NEITHER}),
                         "improved precision/recall, k-NN manifolds, equal set sizes (Kynkäänniemi et al. 2019)"),
    "density_coverage": (MetricSpec(compute_density_coverage, context=("radii_cache",), options_model=KNNOptions,
                                    values={"density": HIGHER, "coverage": HIGHER, "dc_n": NEITHER}),
                         "density and coverage, equal set sizes (Naeem et al. 2020)"),
    "prd": (MetricSpec(compute_prd, options_model=PRDOptions, values={"f[0-9]*": HIGHER, "prd_n": NEITHER}),
            "PRD F8 (recall-like) and F1/8 (precision-like), equal set sizes (Sajjadi et al. 2018)"),
    "per_class_fid": (MetricSpec(compute_per_class_fid, needs_labels=True, options_model=NoOptions, values=_grouped("fid", LOWER)),
                      "FID per class and head/medium/tail averages"),
    "per_class": (MetricSpec(compute_per_class, needs_labels=True, options_model=PerClassOptions,
                             values={**_grouped("kid", LOWER), **_grouped("recall", HIGHER),
                                     **_grouped("coverage", HIGHER), **_grouped("accuracy", HIGHER),
                                     "accuracy": HIGHER}),
                  "per class: KID, recall, coverage, conditional accuracy; head/medium/tail averages"),
    "memorization": (MetricSpec(compute_memorization, context=("training", "fake_images"),
                                options_model=MemorizationOptions,
                                values={"memorization_*": LOWER, "memorization_train_n": NEITHER}),
                     "share of samples copying a training image, d1/d2 < 1/3 (Yoon et al. 2023)"),
}


@hookimpl
def register_components(register) -> None:
    for name, (spec, description) in METRICS.items():
        register("metric", name, spec, description=description)
