"""Training the noise-aware classifier on x_t drawn with a run's noise schedule, and its
held-out accuracy per noise level (as guided-diffusion's ``classifier_train.py`` does, t is
drawn uniformly and x_t = q_sample(x_0, t))."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..errors import CbdmError
from ..images import to_float
from ..schedules import NoiseSchedule
from .net import NoisyClassifier, NoisyClassifierOptions


def epoch_order(labels: torch.Tensor, num_classes: int, balanced: bool, gen: torch.Generator) -> torch.Tensor:
    """One epoch's sample order: a permutation, or (balanced) N draws with replacement with
    every class equally likely, so the tail classes are seen as often as the head."""
    n = labels.shape[0]
    if not balanced:
        return torch.randperm(n, generator=gen)
    counts = torch.bincount(labels, minlength=num_classes).double()
    return torch.multinomial((1.0 / counts.clamp(min=1))[labels], n, replacement=True, generator=gen)


def _noised(x0: torch.Tensor, schedule: NoiseSchedule, t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    return schedule.q_sample(x0, t, noise)


def train_noisy_classifier(images_uint8: torch.Tensor, labels: torch.Tensor, num_classes: int,
                           schedule: NoiseSchedule, *, epochs: int = 20, batch_size: int = 128, lr: float = 2e-3,
                           balanced: bool = True, seed: int = 0, device: str | torch.device = "cpu",
                           width: int = 32, levels: int = 2,
                           progress: Optional[Callable[[int, float], None]] = None) -> NoisyClassifier:
    """AdamW with a one-cycle learning rate on ``(q_sample(x_0, t), t)``, t uniform in 0..T-1.

    ``progress(epoch, mean_loss)`` after each epoch. Returns the model in eval mode on ``device``.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    n, c, h, _ = images_uint8.shape
    if epochs < 1 or batch_size < 1:
        raise CbdmError(f"epochs and batch size must be >= 1, got {epochs} and {batch_size}")
    if labels.shape != (n,) or n < 2:
        raise CbdmError(f"the classifier needs at least 2 images with one label each, got {n}")
    options = NoisyClassifierOptions(in_channels=c, num_classes=num_classes, image_size=h, width=width, levels=levels)
    dev, gen = torch.device(device), torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        model = NoisyClassifier(options).to(dev)
    steps_per_epoch = math.ceil(n / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    x_all, y_all = to_float(images_uint8).to(dev), labels.to(dev)
    model.train()
    for epoch in range(epochs):
        order, total = epoch_order(labels, num_classes, balanced, gen).to(dev), 0.0
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            t = torch.randint(0, schedule.num_timesteps, (idx.numel(),), generator=gen).to(dev)
            loss = F.cross_entropy(model(_noised(x_all[idx], schedule, t, gen), t), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach().item() * idx.numel()
        if progress is not None:
            progress(epoch, total / n)
    model.meta = {"epochs": epochs, "balanced": balanced, "seed": seed, "batch_size": batch_size, "lr": lr,
                  "train_size": n}
    return model.eval()


@torch.no_grad()
def accuracy_by_t(model: NoisyClassifier, schedule: NoiseSchedule, images_uint8: torch.Tensor,
                  labels: torch.Tensor, *, bins: int = 10, seed: int = 1) -> list[dict[str, float]]:
    """Held-out top-1 accuracy per noise level: the T timesteps cut into ``bins`` equal ranges,
    every image noised once at a t drawn uniformly inside each range (fixed ``seed``).

    Returns ``[{"t_lo", "t_hi", "accuracy", "balanced_accuracy"}, ...]`` (inclusive bounds;
    balanced accuracy: the mean over classes present of the per-class accuracy).
    """
    dev = next(model.parameters()).device
    labels = torch.as_tensor(labels, dtype=torch.int64)
    T, gen = schedule.num_timesteps, torch.Generator().manual_seed(seed)
    x0 = to_float(images_uint8).to(dev)
    edges = [round(i * T / bins) for i in range(bins + 1)]
    rows = []
    for lo, hi in zip(edges, edges[1:]):
        if hi <= lo:
            continue
        t = torch.randint(lo, hi, (len(labels),), generator=gen)
        pred = model(_noised(x0, schedule, t.to(dev), gen), t.to(dev)).argmax(1).cpu()
        hit = (pred == labels).double()
        per_class = [hit[labels == k].mean() for k in labels.unique()]
        rows.append({"t_lo": lo, "t_hi": hi - 1, "accuracy": float(hit.mean()),
                     "balanced_accuracy": float(torch.stack(per_class).mean())})
    return rows
