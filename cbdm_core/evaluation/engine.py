"""Evaluate generated samples against the class-balanced real set of a dataset."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, Union

import torch

from ..errors import CbdmError
from ..interfaces import METRIC_CONTEXT, MetricSpec, validate_options
from .extractor import ExtractorInfo, build_extractor
from .inputs import SampleSet, read_samples
from .reference import check_labels, fit_to_reference
from .resolved import EvalComponents
from .values import is_per_class, split_per_class

if TYPE_CHECKING:
    from .prepared import PreparedReference

DEFAULT_METRICS: tuple[str, ...] = ("fid", "is", "kid", "precision_recall", "density_coverage", "prd",
                                     "per_class_fid", "per_class", "memorization")
REFERENCE_SPLITS: tuple[str, ...] = ("auto", "train", "test")
# Keywords the engine passes to metrics itself (the context ones only where a spec asks).
COMMON_OPTIONS: tuple[str, ...] = ("device", "num_classes", "class_counts", *METRIC_CONTEXT)
PER_CLASS_PREFIX = "fid_class_"

WarningFn = Callable[[str], None]


@dataclass
class EvalOptions:
    """What ``cbdm eval`` takes; see :func:`evaluate`.

    ``metrics=None`` means :data:`DEFAULT_METRICS` (then ``per_class_fid`` is skipped for
    unlabelled samples instead of failing); a list or a comma string (``"fid,kid"``).
    ``metric_options`` maps a metric name to its own keyword options (e.g.
    ``{"kid": {"subset_size": 100}}``).

    The reference is the class-balanced ``reference_split`` of ``dataset`` (``auto``: a
    folder's held-out ``test/`` images when it has them, else ``train``), or
    ``reference_folder`` (the user's own, used as given). ``reference_stats``: an FID
    statistics ``.npz`` (``mu``/``sigma``) that FID is computed against instead.
    ``classes``/``class_order``: the folder dataset's class selection, as in training;
    ``image_size``: its ``resize``.
    """

    dataset: str
    data_root: Optional[Path] = None
    extractor: str = "inception"
    classifier: Optional[Path] = None
    inception_weights: Optional[Path] = None
    metrics: Optional[Sequence[str]] = None
    metric_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference_split: str = "auto"
    cache_dir: Optional[Path] = None
    batch_size: int = 200
    device: str = "auto"
    resize: bool = False
    reference_folder: Optional[Path] = None
    reference_stats: Optional[Path] = None
    classes: Optional[list[str]] = None
    class_order: str = "name"
    image_size: Optional[int] = None  # the training data's `resize`: the reference is loaded at it

    def __post_init__(self) -> None:
        if isinstance(self.metrics, str):  # "fid,kid" would otherwise iterate as letters
            self.metrics = [m.strip() for m in self.metrics.split(",") if m.strip()]


@dataclass
class MetricResult:
    """The values of one metric component (``None`` = not computed) and its warnings."""

    metric: str
    values: dict[str, Optional[float]]
    warnings: list[str] = field(default_factory=list)
    skipped: Optional[str] = None
    per_sample: dict[str, Any] = field(default_factory=dict)  # column -> one entry per sample

    @property
    def computed(self) -> bool:
        return any(v is not None for v in self.values.values())


@dataclass
class EvalResult:
    """Everything the report needs."""

    dataset: str
    samples: dict[str, Any]
    reference: dict[str, Any]
    extractor: ExtractorInfo
    metrics: list[MetricResult]
    class_names: list[str]
    class_counts: Optional[list[int]] = None
    class_counts_source: Optional[str] = None
    sample_counts: Optional[list[int]] = None
    warnings: list[str] = field(default_factory=list)
    training: Optional[dict[str, Any]] = None
    sample_labels: Optional[list[int]] = None  # the requested class of each sample
    paper: Optional[dict[str, Any]] = None  # `--paper`: its settings and the deviations from them
    # The computed metrics' specs (what the report reads directions from); never written to a file.
    metric_specs: dict[str, MetricSpec] = field(default_factory=dict, repr=False, compare=False)

    def values(self, per_class: bool = False) -> dict[str, Optional[float]]:
        """All values by name (the per-class ``<name>_class_<c>`` ones only with ``per_class``)."""
        out: dict[str, Optional[float]] = {}
        for m in self.metrics:
            for k, v in m.values.items():
                if per_class or not is_per_class(k):
                    out[k] = v
        return out

    def per_class_values(self) -> dict[int, dict[str, Optional[float]]]:
        """``{class: {name: value}}`` of every per-class value (``fid``, ``kid``, ``recall``, ...)."""
        out: dict[int, dict[str, Optional[float]]] = {}
        for m in self.metrics:
            for k, v in m.values.items():
                parts = split_per_class(k)
                if parts is not None:
                    out.setdefault(parts[1], {})[parts[0]] = v
        return out

    def per_class_fid(self) -> Optional[dict[int, Optional[float]]]:
        """``{class: FID}`` when ``per_class_fid`` ran, else ``None``."""
        for m in self.metrics:
            if m.metric == "per_class_fid" and m.skipped is None:
                return {int(k[len(PER_CLASS_PREFIX):]): v for k, v in m.values.items()
                        if k.startswith(PER_CLASS_PREFIX) and k[len(PER_CLASS_PREFIX):].isdigit()}
        return None


class _WarningLog:
    """Collects the warnings raised during an evaluation (and per metric), passing each on."""

    def __init__(self, on_warning: Optional[WarningFn]) -> None:
        self.all: list[str] = []
        self.current: Optional[list[str]] = None
        self.on_warning = on_warning
        self._catcher = warnings.catch_warnings()
        self._original = warnings.showwarning

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        if not issubclass(category, UserWarning):
            self._original(message, category, filename, lineno, file, line)
            return
        text = str(message)
        self.all.append(text)
        if self.current is not None:
            self.current.append(text)
        if self.on_warning is not None:
            self.on_warning(text)

    def __enter__(self) -> "_WarningLog":
        self._catcher.__enter__()
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = self._show
        return self

    def __exit__(self, *exc: Any) -> None:
        self._catcher.__exit__(*exc)


def chosen_metrics(names: Optional[Sequence[str]]) -> list[str]:
    """The metric names ``names`` asks for (``None``: :data:`DEFAULT_METRICS`), duplicates
    removed; validated at the edge (``build_evaluation.resolve_metrics``)."""
    chosen = list(DEFAULT_METRICS) if names is None else [n.strip() for n in names if n.strip()]
    return list(dict.fromkeys(chosen))


def check_metric_options(options: dict[str, dict[str, Any]], specs: Mapping[str, MetricSpec]) -> None:
    """Each metric's own options (``specs``: the named metrics' specs) valid, none of them one
    the evaluation sets itself."""
    for metric, opts in options.items():
        spec = specs[metric]
        reserved = sorted(set(opts) & set(COMMON_OPTIONS))
        if reserved:
            raise CbdmError(f"metric option(s) {', '.join(reserved)} of {metric!r} are set by the evaluation itself")
        validate_options(getattr(spec, "options_model", None), opts, f"metric {metric!r}")


def check_request(options: EvalOptions) -> None:
    """The options that name no component: reference split and batch size."""
    if options.reference_split not in REFERENCE_SPLITS:
        raise CbdmError(f"reference split must be auto, train or test, got {options.reference_split!r}")
    if options.batch_size < 1:
        raise CbdmError(f"--batch-size must be positive, got {options.batch_size}")


def _finite(values: dict[str, Any]) -> dict[str, Optional[float]]:
    out: dict[str, Optional[float]] = {}
    for k, v in values.items():
        out[k] = None if v is None or not math.isfinite(float(v)) else float(v)
    return out


def _per_sample(metric: str, values: Any, n: int) -> dict[str, Any]:
    """The per-sample columns a metric returned (:class:`~cbdm_core.interfaces.MetricValues`),
    each checked to hold one entry per sample."""
    columns = dict(getattr(values, "per_sample", None) or {})
    for name, col in columns.items():
        if len(col) != n:
            raise CbdmError(f"metric {metric!r} returned {len(col)} per-sample {name!r} entries for {n} samples")
    return columns


def _skip_reason(name: str, spec: Any, sample_set: SampleSet) -> Optional[str]:
    if getattr(spec, "needs_labels", False) and not sample_set.labeled:
        return f"the samples in {sample_set.source} have no class labels"
    return None


def evaluate(samples: Union[Path, str, SampleSet], options: EvalOptions, *, components: EvalComponents,
             reference: Optional["PreparedReference"] = None,
             on_warning: Optional[WarningFn] = None,
             on_status: Optional[Callable[[str], None]] = None) -> EvalResult:
    """Compare ``samples`` (a path :func:`read_samples` accepts, or a :class:`SampleSet`)
    with the class-balanced ``options.reference_split`` of ``options.dataset``.

    ``components``: the names of ``options`` resolved at the edge
    (:func:`cbdm_core.build_evaluation.resolve_evaluation`); the engine reads no registry.
    ``reference``: an already loaded reference (:func:`prepare_reference` with the same
    dataset, split and extractor), so a sweep loads the real set, its features and k-NN radii
    once. Reference features are cached under ``cache_dir/features``. Every ``UserWarning``
    raised on the way (e.g. a metric with too few samples) is passed to ``on_warning`` and
    kept in the result; metrics that could not be computed have ``None`` values.
    """
    from .prepared import prepare_reference

    status = on_status or (lambda _msg: None)
    explicit = options.metrics is not None
    specs = _checked_request(options, components, reference)
    with _WarningLog(on_warning) as log:
        prep = reference if reference is not None else prepare_reference(options, components, on_status=status)
        _check_classifier_classes(prep)
        sample_set, images, resize_note = _read_sample_set(samples, prep, options)
        skipped = _skipped_metrics(specs, sample_set, explicit)
        counts, counts_source, training = _training_inputs(prep, specs, skipped, sample_set, explicit, status)
        status(f"sample features ({len(images)} images)")
        fake = prep.extractor.extract(images, batch_size=options.batch_size, device=prep.device)
        if sample_set.labeled:
            fake = fake.with_labels(sample_set.labels)
        context = {"radii_cache": prep.radii, "training": training, "fake_images": images}
        results = [_metric_result(name, specs[name], skipped, prep, fake, images, counts, context, options, log,
                                  status) for name in specs]
    num_classes = prep.images.num_classes
    sample_counts = (torch.bincount(sample_set.labels, minlength=num_classes).tolist()
                     if sample_set.labeled else None)
    cached = prep.cached
    return EvalResult(
        dataset=options.dataset,
        samples={"source": str(sample_set.source), "kind": sample_set.kind, "count": len(sample_set),
                 "labeled": sample_set.labeled,
                 "image_shape": [int(s) for s in sample_set.images.shape[1:]],
                 "resized": resize_note},
        reference={**prep.describe(), "cache_key": cached.cache_key, "cache_file": str(cached.cache_file),
                   "cache_hit": cached.cache_hit},
        extractor=prep.info,
        metrics=results,
        class_names=list(prep.images.class_names),
        class_counts=counts,
        class_counts_source=counts_source,
        sample_counts=sample_counts,
        warnings=log.all,
        training=None if training is None else {"description": training.description,
                                                "count": int(len(training.labels))},
        sample_labels=sample_set.labels.tolist() if sample_set.labeled else None,
        metric_specs=dict(specs),
    )


def _check_classifier_classes(prep: "PreparedReference") -> None:
    """A feature classifier's classes against the reference's: another count, or the same names in another
    order (a folder dataset with ``class_order: count``), made every accuracy and per-class value silently
    wrong. Names that differ altogether (a classifier of another dataset) only warn."""
    model = getattr(prep.extractor, "model", None)
    names = (getattr(model, "meta", None) or {}).get("class_names")
    count = getattr(getattr(model, "options", None), "num_classes", None)
    if count is None:  # not a cbdm classifier (Inception, a plugin's extractor)
        return
    ref = [str(n) for n in prep.images.class_names]
    path = getattr(prep.extractor, "path", "the classifier")
    if count != len(ref):
        raise CbdmError(f"classifier {path} has {count} classes but the reference has {len(ref)}; train one for "
                        "this dataset (cbdm eval train-classifier)")
    if not isinstance(names, list) or [str(n) for n in names] == ref:
        return
    if sorted(map(str, names)) == sorted(ref):
        raise CbdmError(f"classifier {path} orders its classes {', '.join(map(str, names[:6]))}, the reference "
                        f"{', '.join(ref[:6])} (data.class_order?); its class index would name another class: "
                        "train one in the reference's order (cbdm eval train-classifier --class-order)")
    warnings.warn(f"classifier {path} was trained on classes {', '.join(map(str, names[:6]))}, the reference has "
                  f"{', '.join(ref[:6])}: accuracy compares class indices", stacklevel=2)


def _checked_request(options: EvalOptions, components: EvalComponents,
                     reference: Optional["PreparedReference"]) -> dict[str, Any]:
    """The chosen metrics' specs, in order, once every option is checked (before any loading);
    the names were checked where ``components`` were resolved."""
    specs = components.specs_for(chosen_metrics(options.metrics))
    check_request(options)
    if options.extractor == "classifier" and options.classifier is None:
        build_extractor(options, components.extractor)  # the clear error, before any loading
    if reference is not None and not reference.matches(options):
        raise CbdmError(f"the prepared reference is {reference.dataset} {reference.split} with "
                        f"{reference.info.name} features, but the options ask for {options.dataset} "
                        f"{options.reference_split} with {options.extractor}")
    return specs


def _read_sample_set(samples: Union[Path, str, SampleSet], prep: "PreparedReference",
                     options: EvalOptions) -> tuple[SampleSet, torch.Tensor, Optional[str]]:
    """The sample set, checked against the reference's classes; its images fitted to the reference."""
    ref = prep.images
    sample_set = samples if isinstance(samples, SampleSet) else read_samples(Path(samples), ref.class_names)
    model_classes = (sample_set.manifest or {}).get("num_classes")
    if sample_set.labeled and isinstance(model_classes, int) and model_classes != ref.num_classes:
        raise CbdmError(f"the samples in {sample_set.source} come from a model with {model_classes} classes "
                        f"but {options.dataset} has {ref.num_classes}")
    check_labels(sample_set.labels, ref.num_classes, str(sample_set.source))
    images, resize_note = fit_to_reference(sample_set.images, prep.chw, options.dataset, options.resize)
    return sample_set, images, resize_note


def _skipped_metrics(specs: dict[str, Any], sample_set: SampleSet, explicit: bool) -> dict[str, str]:
    """Why each metric that needs labels is skipped for unlabelled samples (an error when asked for)."""
    skipped: dict[str, str] = {}
    for name, spec in specs.items():
        reason = _skip_reason(name, spec, sample_set)
        if reason is None:
            continue
        if explicit:
            raise CbdmError(f"metric {name!r} needs labelled samples; {reason}")
        skipped[name] = reason
        warnings.warn(f"{name} NOT COMPUTED: {reason}", UserWarning, stacklevel=2)
    return skipped


def _training_inputs(prep: "PreparedReference", specs: dict[str, Any], skipped: dict[str, str],
                     sample_set: SampleSet, explicit: bool, status: Callable[[str], None]) -> tuple:
    """The training class counts (and where they came from) and the training set, where a
    metric still to compute needs them; metrics whose training set is missing join ``skipped``."""
    counts, counts_source = None, None
    if sample_set.labeled and any(getattr(s, "needs_labels", False) or getattr(s, "needs_training_set", False)
                                  for n, s in specs.items() if n not in skipped):
        counts, counts_source = prep.training_counts(sample_set.manifest)
    training = None
    wanted = [n for n, s in specs.items() if getattr(s, "needs_training_set", False) and n not in skipped]
    if wanted:
        try:
            training = prep.training(sample_set.manifest, status)
        except CbdmError as exc:
            if explicit:
                raise
            for n in wanted:
                skipped[n] = f"the training set is not available ({exc})"
                warnings.warn(f"{n} NOT COMPUTED: {skipped[n]}", UserWarning, stacklevel=2)
    return counts, counts_source, training


def _metric_result(name: str, spec: Any, skipped: dict[str, str], prep: "PreparedReference", fake: Any,
                   images: torch.Tensor, counts: Any, context: dict[str, Any], options: EvalOptions,
                   log: _WarningLog, status: Callable[[str], None]) -> MetricResult:
    """One metric's values against the reference, with the warnings raised while computing it."""
    if name in skipped:
        return MetricResult(name, {}, [], skipped[name])
    status(f"metric {name}")
    log.current = []
    extra = {k: context[k] for k in getattr(spec, "context", ())}
    if name == "fid" and prep.stats is not None:
        values = prep.stats.fid(fake)
    else:
        user = validate_options(getattr(spec, "options_model", None),
                                options.metric_options.get(name, {}), f"metric {name!r}")
        values = spec.compute(prep.cached.features, fake, device=prep.device, num_classes=prep.images.num_classes,
                              class_counts=counts, **extra, **user)
    result = MetricResult(name, _finite(values), log.current, per_sample=_per_sample(name, values, len(images)))
    log.current = None
    return result
