"""Training the small CNN classifier on a dataset's real training images."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import CbdmError
from .base import check_images
from .classifier_net import ClassifierOptions, SmallClassifier


def _epoch_order(labels: torch.Tensor, num_classes: int, balanced: bool, gen: torch.Generator) -> torch.Tensor:
    """Sample order for one epoch: a permutation, or (balanced) N draws with replacement
    where every class is equally likely."""
    n = labels.shape[0]
    if not balanced:
        return torch.randperm(n, generator=gen)
    counts = torch.bincount(labels, minlength=num_classes).double()
    weights = (1.0 / counts.clamp(min=1))[labels]
    return torch.multinomial(weights, n, replacement=True, generator=gen)


def _augment(x: torch.Tensor, random_shift: bool, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to 1/8 of the size (reflect padding) and optional flips."""
    if random_shift:
        b, _, h, w = x.shape
        pad = max(1, h // 8)
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    if hflip:
        flip = torch.rand(x.shape[0], generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
    return x


def train_classifier(images_uint8: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                     epochs: int = 30, batch_size: int = 128, lr: float = 2e-3, balanced: bool = True,
                     seed: int = 0, device: str | torch.device = "cpu", width: int = 32,
                     feature_dim: int = 128, weight_decay: float = 5e-4, random_shift: bool = False,
                     hflip: bool = False,
                     progress: Callable[[int, float], None] | None = None) -> SmallClassifier:
    """Train a :class:`SmallClassifier` with AdamW and a cosine learning-rate decay.

    ``balanced`` re-samples the training batches so every class is equally frequent
    (long-tailed data otherwise yields a head-class-biased feature space).
    ``progress(epoch, mean_loss)`` is called after each epoch. Returns the model in
    eval mode on ``device``.
    """
    check_images(images_uint8)
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    n, c, h, w = images_uint8.shape
    if labels.shape != (n,):
        raise CbdmError(f"classifier training needs one label per image ({n}), got shape {tuple(labels.shape)}")
    if num_classes < 2:
        raise CbdmError(f"a feature classifier needs at least 2 classes to tell apart; the data has {num_classes}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise CbdmError(f"classifier labels must be in 0..{num_classes - 1}")
    if epochs < 1 or batch_size < 1:
        raise CbdmError(f"epochs and batch size must be >= 1, got {epochs} and {batch_size}")
    options = ClassifierOptions(in_channels=c, num_classes=num_classes, image_size=h,
                                width=width, feature_dim=feature_dim)
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    # Seed the initialisation without disturbing the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallClassifier(options).to(dev)
    steps_per_epoch = math.ceil(n / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15)
    images_dev, labels_dev = images_uint8.to(dev), labels.to(dev)
    model.train()
    for epoch in range(epochs):
        order = _epoch_order(labels, num_classes, balanced, gen).to(dev)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            if idx.numel() < 2:  # BatchNorm needs more than one sample
                continue
            x = _augment(model.normalize(images_dev[idx]), random_shift, hflip, gen)
            loss = F.cross_entropy(model(x), labels_dev[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach().item() * idx.numel()
        if progress is not None:
            progress(epoch, total / n)
    model.meta = {"epochs": epochs, "balanced": balanced, "seed": seed, "train_size": n}
    return model.eval()


@torch.no_grad()
def classifier_accuracy(model: SmallClassifier, images_uint8: torch.Tensor, labels: torch.Tensor,
                        batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on a labelled image set."""
    dev = next(model.parameters()).device
    labels = torch.as_tensor(labels, dtype=torch.int64)
    correct = 0
    for i in range(0, images_uint8.shape[0], batch_size):
        pred = model(images_uint8[i:i + batch_size].to(dev)).argmax(dim=1).cpu()
        correct += int((pred == labels[i:i + batch_size]).sum())
    return correct / images_uint8.shape[0]
