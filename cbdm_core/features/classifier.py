"""Feature extractor backed by a trained :class:`SmallClassifier` file."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import CbdmError
from ..tensor_io import tensors_digest
from .base import FeatureSet, batches, check_images
from .classifier_net import SmallClassifier, load_classifier


def classifier_digest(model: SmallClassifier) -> str:
    """SHA-256 of a classifier's content: its tensors and architecture options."""
    options = json.dumps(asdict(model.options), sort_keys=True)
    return hashlib.sha256(f"{tensors_digest(model.state_dict())}|{options}".encode()).hexdigest()


class ClassifierExtractor:
    """Penultimate features and softmax probabilities of a dataset-specific classifier."""

    name = "classifier"

    def __init__(self, classifier_path: str | os.PathLike) -> None:
        self.path = Path(classifier_path)
        self.model = load_classifier(self.path)
        # The weights and architecture identify the feature space; the file name and the
        # file's bytes (metadata, its order, the training record) do not.
        self.cache_key = f"classifier-{classifier_digest(self.model)[:12]}"

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
