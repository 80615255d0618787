"""Evaluation of generated samples: reading them, the class-balanced reference set and
its cached features, the metrics, and the reports (table, ``metrics.json``, plot)."""

from .engine import (
    DEFAULT_METRICS,
    EvalOptions,
    EvalResult,
    ExtractorInfo,
    MetricResult,
    build_extractor,
    evaluate,
    resolve_metrics,
)
from .inputs import SampleSet, read_samples
from .reference import default_cache_dir, fit_to_reference, load_reference, training_class_counts
from .report import METRICS_JSON, PER_CLASS_PLOT, metrics_table, plot_per_class_fid, result_to_dict, write_metrics_json

__all__ = [
    "DEFAULT_METRICS",
    "EvalOptions",
    "EvalResult",
    "ExtractorInfo",
    "METRICS_JSON",
    "MetricResult",
    "PER_CLASS_PLOT",
    "SampleSet",
    "build_extractor",
    "default_cache_dir",
    "evaluate",
    "fit_to_reference",
    "load_reference",
    "metrics_table",
    "plot_per_class_fid",
    "read_samples",
    "resolve_metrics",
    "result_to_dict",
    "training_class_counts",
    "write_metrics_json",
]
