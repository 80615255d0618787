"""A small CNN classifier used as a dataset-specific feature extractor, and its
safetensors file format."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CbdmError
from ..tensor_io import load_format_file, save_tensors

FORMAT = "cbdm-classifier-v1"
MIN_SIZE = 4


@dataclass(frozen=True)
class ClassifierOptions:
    """Architecture options, stored in the file's metadata."""

    in_channels: int
    num_classes: int
    image_size: int
    width: int = 32
    feature_dim: int = 128

    def validate(self) -> None:
        if self.in_channels < 1 or self.num_classes < 2 or self.width < 1 or self.feature_dim < 1:
            raise CbdmError(f"invalid classifier options: {self}")
        if self.image_size < MIN_SIZE:
            raise CbdmError(f"the classifier needs images of at least {MIN_SIZE}x{MIN_SIZE}, "
                            f"got {self.image_size}")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallClassifier(nn.Module):
    """Three conv stages (two 2x poolings, then global average pooling), a
    ``feature_dim`` penultimate layer and a linear head. Works from 4x4 to 32x32+."""

    def __init__(self, options: ClassifierOptions) -> None:
        super().__init__()
        options.validate()
        self.options = options
        self.meta: dict[str, Any] = {}
        w = options.width
        self.body = nn.Sequential(
            _block(options.in_channels, w), _block(w, w), nn.MaxPool2d(2),
            _block(w, 2 * w), _block(2 * w, 2 * w), nn.MaxPool2d(2),
            _block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * w, options.feature_dim), nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(options.feature_dim, options.num_classes)

    @staticmethod
    def normalize(images: torch.Tensor) -> torch.Tensor:
        """uint8 0..255 -> float -1..1 (floats are assumed already normalised)."""
        return images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[N, feature_dim]`` (the head's input)."""
        return self.body(self.normalize(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, num_classes]``."""
        return self.head(self.features(images))


def save_classifier(model: SmallClassifier, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
    """Save weights and architecture options (plus JSON-able ``meta``) atomically as safetensors."""
    metadata = {
        "format": FORMAT,
        "options": json.dumps(asdict(model.options)),
        "meta": json.dumps({**model.meta, **(meta or {})}),
    }
    save_tensors(path, model.state_dict(), metadata)


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> SmallClassifier:
    """Load a classifier saved by :func:`save_classifier` (eval mode; ``model.meta`` holds the meta)."""
    path = Path(path)
    state, metadata = load_format_file(path, FORMAT, kind="classifier file", foreign="a cbdm classifier file",
                                       make_hint="train one with the classifier training command")
    try:
        options = ClassifierOptions(**json.loads(metadata["options"]))
        model = SmallClassifier(options)
        model.load_state_dict(state)
        model.meta = json.loads(metadata.get("meta", "{}"))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CbdmError(f"classifier file {path} is corrupt or from another version: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return model.to(device).eval()
