"""Feature sets and the feature-extractor contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Protocol

import torch

from ..errors import CbdmError


@dataclass
class FeatureSet:
    """Features of an image set, as produced by a feature extractor.

    Attributes:
        features: ``float [N, D]``.
        labels: ``int64 [N]`` class labels, attached by the caller (``None`` if unknown).
        probs: ``float [N, K]`` class probabilities of the extractor's own classifier head
            (Inception: 1008 ImageNet classes; ``None`` if the extractor has none).
        extractor: the extractor's ``cache_key``, so features from different networks
            are never compared by mistake.
    """

    features: torch.Tensor
    labels: Optional[torch.Tensor] = None
    probs: Optional[torch.Tensor] = None
    extractor: str = ""

    def __post_init__(self) -> None:
        if self.features.dim() != 2 or not self.features.is_floating_point():
            raise CbdmError(f"features must be a float [N, D] tensor, got {self.features.dtype} "
                            f"{tuple(self.features.shape)}")
        n = self.features.shape[0]
        if self.labels is not None and tuple(self.labels.shape) != (n,):
            raise CbdmError(f"labels must have shape [{n}], got {tuple(self.labels.shape)}")
        if self.probs is not None and (self.probs.dim() != 2 or self.probs.shape[0] != n):
            raise CbdmError(f"probs must have shape [{n}, K], got {tuple(self.probs.shape)}")

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def with_labels(self, labels: torch.Tensor) -> "FeatureSet":
        """A copy carrying ``labels`` (the caller knows them, the extractor does not)."""
        return FeatureSet(self.features, torch.as_tensor(labels, dtype=torch.int64), self.probs, self.extractor)


class FeatureExtractor(Protocol):
    """What the ``feature_extractor`` factories return.

    ``extract(images, batch_size=..., device=...)`` takes ``uint8 [N, C, H, W]`` images and
    returns a :class:`FeatureSet` (features and probs on the CPU, no labels).
    ``cache_key`` identifies the network *and its weights* for caching reference features.
    """

    name: str
    cache_key: str

    def extract(self, images: torch.Tensor, batch_size: int = 100,
                device: str | torch.device = "cpu") -> FeatureSet: ...


def check_images(images: torch.Tensor, channels: tuple[int, ...] | None = None) -> None:
    """Raise ``CbdmError`` unless ``images`` is ``uint8 [N, C, H, W]`` with an allowed ``C``."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        desc = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise CbdmError(f"feature extraction needs uint8 images [N, C, H, W], got {desc}")
    if channels is not None and images.shape[1] not in channels:
        raise CbdmError(f"feature extractor accepts {' or '.join(map(str, channels))} channel images, "
                        f"got {images.shape[1]}")
    if images.shape[0] == 0:
        raise CbdmError("feature extraction got an empty image set")


def batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive slices of at most ``batch_size`` images."""
    if batch_size < 1:
        raise CbdmError(f"batch size must be >= 1, got {batch_size}")
    for i in range(0, images.shape[0], batch_size):
        yield images[i:i + batch_size]
