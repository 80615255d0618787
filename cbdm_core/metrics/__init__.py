"""Evaluation metrics: pure functions of feature matrices (numpy or torch)."""

from ._common import InsufficientSamplesError, MetricWarning, equal_size_indices
from .fid import feature_statistics, fid_from_features, frechet_distance
from .groups import GROUPS, describe_rule, frequency_groups, group_by_frequency, group_rule
from .inception_score import inception_score
from .kid import kid
from .knn import ball_counts, knn_radii, manifold_coverage, nearest_distance, two_nearest
from .memorization import NearestTraining, TrainingReference, memorization, nearest_ratio, nearest_training
from .per_class import conditional_accuracy, per_class_fid, per_class_scores
from .prd import max_f_beta, prd_curve, prd_fbeta, prd_from_histograms
from .precision_recall import (
    RadiiCache,
    density_coverage,
    density_coverage_n,
    precision_recall,
    precision_recall_n,
)

__all__ = [
    "GROUPS",
    "InsufficientSamplesError",
    "MetricWarning",
    "RadiiCache",
    "TrainingReference",
    "ball_counts",
    "conditional_accuracy",
    "density_coverage",
    "density_coverage_n",
    "describe_rule",
    "equal_size_indices",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "frequency_groups",
    "group_by_frequency",
    "group_rule",
    "inception_score",
    "kid",
    "knn_radii",
    "manifold_coverage",
    "max_f_beta",
    "memorization",
    "nearest_distance",
    "nearest_ratio",
    "nearest_training",
    "NearestTraining",
    "per_class_fid",
    "per_class_scores",
    "prd_curve",
    "prd_fbeta",
    "prd_from_histograms",
    "precision_recall",
    "precision_recall_n",
    "two_nearest",
]
