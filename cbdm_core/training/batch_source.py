"""Global training batches from an in-memory uint8 dataset.

The dataset is kept on the training device as uint8 when it fits (CIFAR-10: 150 MB),
so a batch is one on-device gather. A dataset too large for the device stays in host
memory and each batch is gathered there and copied asynchronously from pinned memory.
Either way batch ``step`` is ``images[indexer.indices(step)]``: the same images a
DataLoader with that index list would give, on any device.
"""

from __future__ import annotations

from typing import Optional

import torch

from .batches import BatchIndexer

# Keep the dataset on the GPU while it takes at most this share of the free memory.
DEVICE_SHARE = 0.25


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        # Pinned + non_blocking: a pageable copy would make the host wait for the GPU every step.
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_SHARE * free


class BatchSource:
    """``batch(step) -> (uint8 images [B, C, H, W], labels [B])`` on ``device``.

    Args:
        images: uint8 ``[N, C, H, W]`` (CPU).
        labels: int ``[N]``.
        indexer: which indices make up each step's batch.
        device: the training device.
        resident: keep the images on the device (default: when they fit).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indexer: BatchIndexer, device: torch.device,
                 resident: Optional[bool] = None):
        self.indexer = indexer
        self.device = device
        nbytes = images.numel() * images.element_size()
        self.resident = fits_on_device(nbytes, device) if resident is None else resident
        self.labels = labels.to(device)
        self.images = images.to(device) if self.resident else images

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.indexer.indices(step)
        if self.resident:
            idx_dev = _to_device(idx, self.device)
            return self.images[idx_dev], self.labels[idx_dev]
        return _to_device(self.images[idx], self.device), self.labels[_to_device(idx, self.device)]
