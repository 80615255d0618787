"""Feature extractors (Inception v3, dataset-specific classifier) and feature caching."""

from .base import FeatureExtractor, FeatureSet, check_images
from .cache import cache_path, cached_features, load_feature_set, reference_key, save_feature_set
from .classifier import ClassifierExtractor, build_classifier_extractor
from .classifier_net import ClassifierOptions, SmallClassifier, load_classifier, save_classifier
from .classifier_training import classifier_accuracy, train_classifier
from .inception import ENV_WEIGHTS, InceptionExtractor, build_inception, inception_weights_url

__all__ = [
    "ENV_WEIGHTS",
    "ClassifierExtractor",
    "ClassifierOptions",
    "FeatureExtractor",
    "FeatureSet",
    "InceptionExtractor",
    "SmallClassifier",
    "build_classifier_extractor",
    "build_inception",
    "cache_path",
    "cached_features",
    "check_images",
    "classifier_accuracy",
    "inception_weights_url",
    "load_classifier",
    "load_feature_set",
    "reference_key",
    "save_classifier",
    "save_feature_set",
    "train_classifier",
]
