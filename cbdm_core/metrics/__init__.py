"""Evaluation metrics: pure functions of feature matrices (numpy or torch)."""

from ._common import InsufficientSamplesError, MetricWarning
from .fid import feature_statistics, fid_from_features, frechet_distance
from .inception_score import inception_score
from .kid import kid
from .per_class import frequency_groups, group_by_frequency, per_class_fid
from .prd import max_f_beta, prd_curve, prd_fbeta, prd_from_histograms
from .precision_recall import knn_radii, manifold_coverage, precision_recall

__all__ = [
    "InsufficientSamplesError",
    "MetricWarning",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "frequency_groups",
    "group_by_frequency",
    "inception_score",
    "kid",
    "knn_radii",
    "manifold_coverage",
    "max_f_beta",
    "per_class_fid",
    "prd_curve",
    "prd_fbeta",
    "prd_from_histograms",
    "precision_recall",
]
