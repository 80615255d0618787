"""Downstream recognition (paper Table 4): does adding generated images help a classifier
trained on the long-tailed set? A ResNet-32 (He et al. 2016, CIFAR variant) is trained on
the real long-tailed training set, and on it plus generated images, and scored on the
balanced test set by accuracy, macro precision and macro recall."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CbdmError


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for small images; n=5 gives ResNet-32 (0.46M parameters at width 16).

    Args:
        num_classes: output classes.
        in_channels: 1 (grayscale) or 3.
        blocks_per_stage: n (5 for ResNet-32).
        width: channels of the first stage (16; then 32, 64).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, blocks_per_stage: int = 5, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for stage, mult in enumerate((1, 2, 4)):
            for b in range(blocks_per_stage):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(_BasicBlock(cin, width * mult, stride))
                cin = width * mult
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


@dataclass
class DownstreamOptions:
    """Training recipe (the usual CIFAR-LT one, shortened by default for CPUs).

    Args:
        epochs: passes over the training set.
        batch_size: SGD batch size.
        lr: initial learning rate (cosine decay, SGD momentum 0.9).
        weight_decay: L2 weight decay.
        blocks_per_stage: 5 for ResNet-32.
        width: first-stage channels.
        seed: initialisation and batch order.
        device: where to train.
        hflip: random horizontal flips (natural images yes, digits no).
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    blocks_per_stage: int = 5
    width: int = 16
    seed: int = 0
    device: str = "cpu"
    hflip: bool = True


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


def train_resnet(images: torch.Tensor, labels: torch.Tensor, num_classes: int, opts: DownstreamOptions) -> nn.Module:
    """Train a ResNet-CIFAR on uint8 images ``[N, C, H, W]`` with random flips and crops."""
    if len(images) == 0:
        raise CbdmError("downstream training set is empty")
    if opts.epochs <= 0 or opts.batch_size <= 0:
        raise CbdmError("downstream epochs and batch size must be positive")
    g = torch.Generator().manual_seed(opts.seed)
    torch.manual_seed(opts.seed)
    device = torch.device(opts.device)
    model = ResNetCifar(num_classes, images.shape[1], opts.blocks_per_stage, opts.width).to(device)
    optim = torch.optim.SGD(model.parameters(), lr=opts.lr, momentum=0.9, weight_decay=opts.weight_decay,
                            nesterov=True)
    steps_per_epoch = max(1, -(-len(images) // opts.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, opts.epochs * steps_per_epoch)
    x_all, y_all = images.to(device), labels.to(device)
    model.train()
    for _ in range(opts.epochs):
        perm = torch.randperm(len(images), generator=g).to(device)
        for i in range(0, len(images), opts.batch_size):
            idx = perm[i:i + opts.batch_size]
            x = _to_float(x_all[idx])
            flip = torch.rand(len(idx), generator=g).to(device) < 0.5
            if opts.hflip:
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            pad = max(1, x.shape[-1] // 8)
            dx, dy = (int(v) for v in torch.randint(-pad, pad + 1, (2,), generator=g))
            x = torch.roll(F.pad(x, (pad, pad, pad, pad), value=-1.0), (dy, dx), dims=(2, 3))[..., pad:-pad, pad:-pad]
            loss = F.cross_entropy(model(x), y_all[idx])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
    return model.eval()


def class_interleaved_subset(labels: torch.Tensor, num: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``num`` items spread as evenly over the classes as the items allow: a random
    first item of every class, then a random second of every class, and so on (so the first
    ``num`` of a class-sorted, balanced sample folder are not all class 0)."""
    if num < 0:
        raise CbdmError(f"cannot take {num} images")
    if num > len(labels):
        raise CbdmError(f"asked for {num} generated images but only {len(labels)} are there")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    shuffled = labels[perm]
    # rank of each item within its class, in shuffled order
    order = torch.argsort(shuffled, stable=True)
    sorted_labels = shuffled[order]
    starts = torch.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order)) - starts
    pick = torch.argsort(rank, stable=True)[:num]
    return perm[pick]


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    device = next(model.parameters()).device
    out = [model(_to_float(images[i:i + batch_size].to(device))).argmax(1).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def classification_scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy, macro precision and macro recall (a class never predicted has precision 0)."""
    pred_np, tgt_np = pred.numpy(), target.numpy()
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (tgt_np, pred_np), 1)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    actual = cm.sum(1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    present = actual > 0
    return {"accuracy": float(tp.sum() / max(1, len(tgt_np))),
            "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
            "macro_recall": float(recall[present].mean()) if present.any() else 0.0}


def downstream_comparison(train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor,
                          test_labels: torch.Tensor, num_classes: int,
                          generated: Sequence[tuple[str, torch.Tensor, torch.Tensor]],
                          opts: Optional[DownstreamOptions] = None) -> dict[str, dict[str, float]]:
    """Scores of a classifier trained on the real set, and on it plus each generated set.

    Args:
        generated: ``(name, images, labels)`` per model; images uint8 like the real ones.
    """
    opts = opts or DownstreamOptions()
    for name, imgs, _ in generated:
        if tuple(imgs.shape[1:]) != tuple(train_images.shape[1:]):
            raise CbdmError(f"generated set {name}: images {tuple(imgs.shape[1:])} do not match the real "
                            f"{tuple(train_images.shape[1:])}")
    results = {}
    runs = [("real", train_images, train_labels)] + [
        (f"real+{name}", torch.cat([train_images, imgs]), torch.cat([train_labels, labs.long()]))
        for name, imgs, labs in generated]
    for name, x, y in runs:
        model = train_resnet(x, y, num_classes, opts)
        scores = classification_scores(predict(model, test_images), test_labels, num_classes)
        results[name] = {**scores, "train_images": int(len(x))}
    return results
