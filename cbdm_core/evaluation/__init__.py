"""Evaluation of generated samples: reading them, the class-balanced reference set and
its cached features, the metrics, and the reports (table, ``metrics.json``, plot)."""

from .engine import (
    DEFAULT_METRICS,
    EvalOptions,
    EvalResult,
    ExtractorInfo,
    MetricResult,
    build_extractor,
)
from .api import evaluate, prepare_reference
from .inputs import SampleSet, read_samples
from .resolved import EvalComponents
from .prepared import PreparedReference, ReferenceRadii
from .reference import default_cache_dir, fit_to_reference, load_reference, training_class_counts
from .report import (METRICS_JSON, PER_CLASS_PLOT, RECORD_COLUMNS, RECORDS_CSV, metrics_table, plot_per_class_fid,
                     read_records_csv, records_table, result_to_dict, write_metrics_json, write_records_csv)
from .values import direction_of, is_per_class, provider_of, rankable, summary_values

__all__ = [
    "DEFAULT_METRICS",
    "EvalComponents",
    "EvalOptions",
    "EvalResult",
    "ExtractorInfo",
    "METRICS_JSON",
    "MetricResult",
    "PER_CLASS_PLOT",
    "PreparedReference",
    "ReferenceRadii",
    "SampleSet",
    "build_extractor",
    "default_cache_dir",
    "direction_of",
    "is_per_class",
    "evaluate",
    "fit_to_reference",
    "load_reference",
    "metrics_table",
    "plot_per_class_fid",
    "prepare_reference",
    "provider_of",
    "rankable",
    "read_samples",
    "result_to_dict",
    "summary_values",
    "training_class_counts",
    "write_metrics_json",
    "write_records_csv",
    "read_records_csv",
    "records_table",
    "RECORDS_CSV",
    "RECORD_COLUMNS",
]
