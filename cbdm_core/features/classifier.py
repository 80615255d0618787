"""Feature extractor backed by a trained :class:`SmallClassifier` file."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import CbdmError
from ._io import file_sha256
from .base import FeatureSet, batches, check_images
from .classifier_net import load_classifier


class ClassifierExtractor:
    """Penultimate features and softmax probabilities of a dataset-specific classifier."""

    name = "classifier"

    def __init__(self, classifier_path: str | os.PathLike) -> None:
        self.path = Path(classifier_path)
        self.model = load_classifier(self.path)
        # The weights identify the feature space; the file name does not.
        self.cache_key = f"classifier-{file_sha256(self.path)[:12]}"

    @torch.no_grad()
    def extract(self, images: torch.Tensor, batch_size: int = 500,
                device: str | torch.device = "cpu") -> FeatureSet:
        """Features of ``uint8 [N, C, H, W]`` images with the classifier's channels and size."""
        opts = self.model.options
        check_images(images, channels=(opts.in_channels,))
        if tuple(images.shape[-2:]) != (opts.image_size, opts.image_size):
            raise CbdmError(f"classifier {self.path} was trained on {opts.image_size}x{opts.image_size} "
                            f"images, got {images.shape[-2]}x{images.shape[-1]}")
        dev = torch.device(device)
        self.model.to(dev).eval()
        feats, probs = [], []
        for batch in batches(images, batch_size):
            f = self.model.features(batch.to(dev))
            feats.append(f.float().cpu())
            probs.append(torch.softmax(self.model.head(f).double(), dim=1).float().cpu())
        return FeatureSet(torch.cat(feats), None, torch.cat(probs), self.cache_key)


def build_classifier_extractor(classifier_path: str | os.PathLike | None = None, **options) -> ClassifierExtractor:
    """Factory registered as feature extractor ``classifier``; option ``classifier_path`` (required)."""
    if options:
        raise CbdmError(f"unknown option(s) for feature extractor 'classifier': {', '.join(sorted(options))}; "
                        "available: classifier_path")
    if not classifier_path:
        raise CbdmError("feature extractor 'classifier' needs the classifier_path option "
                        "(a file written by the classifier training command)")
    return ClassifierExtractor(classifier_path)
