"""DiffROP's ``released`` form: the overlap term as CCUA's released SiT code writes it.

Source: ``C-Fun/Contrastive-Conditional-Unconditional-Alignment-for-Long-tailed-Diffusion-Model``
@ ``baff9def6cfd553d4452d10eab0bac66ec2727aa``, ``CCUA-SiT/SiT/transport/transport.py`` lines
171-180 (the term), 232 and 235 (``loss += diffrop * term``) and ``CCUA-SiT/SiT/train.py`` lines
374-375 (``--diffrop``, default 0.1). It is the CCUA authors' DiffROP *baseline* in their SiT
pipeline (Meng Tang is the last author of both papers), not a release by DiffROP's authors, and
it differs from DiffROP's abstract (no KL of one ``x_t`` under two labels, no margin). As read:

    pi  = a random permutation of the batch rows
    d   = mean_i [ w_i * [y_pi(i) != y_i] * mean_pixels (pred_i - pred_pi(i))^2 ]
    L   = L_diffusion + lambda * 1 / (1 + d)

``pred`` is the network output of each row on its own ``x_t`` (SiT: the velocity; here the
base loss's prediction, eps for ``ddpm``), both sides carry gradients, ``y`` are the true labels
(SiT drops labels for classifier-free training inside the model, so the mask sees the true
ones and dropped rows take part), the batch mean runs over all ``B`` rows (masked rows count
in the denominator), and ``w_i`` is SiT's time ``t`` (data at ``t = 1``), mapped here to
``(1 - t/T)^p`` with ``p = 1`` (see docs/methods.md, "DiffROP").
"""

from __future__ import annotations

import torch


def permutation_from_keys(keys: torch.Tensor, b: int) -> torch.Tensor:
    """A uniformly random permutation of ``b`` rows: the order of the first ``b`` random keys.

    The keys are drawn with the step's other random numbers (on the global batch under
    ``torchrun``); each rank orders the first ``b`` of them, so every rank permutes its own rows,
    as each GPU of the released DDP code permutes its local batch.
    """
    if keys.shape[0] < b:  # keys of another batch: a bug, not a user error
        raise RuntimeError(f"diffrop: {keys.shape[0]} permutation keys for {b} rows")
    return torch.argsort(keys[:b])


def released_overlap(pred: torch.Tensor, y: torch.Tensor, time_weight: torch.Tensor,
                     perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1 / (1 + d), d)`` with ``d = mean_i w_i [y_perm(i) != y_i] mean_pixels (pred_i - pred_perm(i))^2``."""
    mask = (y[perm] != y).to(pred.dtype)
    mse = (pred - pred[perm]).pow(2).flatten(1).mean(dim=1)  # [B], over channels and pixels
    d = (time_weight.to(pred.dtype) * mask * mse).mean()  # over all B rows, masked ones included
    return 1.0 / (1.0 + d), d


__all__ = ["permutation_from_keys", "released_overlap"]
