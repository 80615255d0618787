"""Inception Score from class probabilities (Salimans et al. 2016)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import CbdmError
from ._common import ArrayLike, InsufficientSamplesError, as_torch2d


def _canonical_order(p: torch.Tensor) -> np.ndarray:
    """A row order that depends only on the rows' values (lexicographic), not on their input order."""
    rows = p.detach().cpu().numpy()
    return np.lexsort(rows.T[::-1])


def inception_score(probs: ArrayLike, splits: int = 10, *, seed: int = 2020) -> tuple[float, float]:
    """Mean and standard deviation over ``splits`` of ``exp(E_x KL(p(y|x) || p(y)))``.

    ``probs`` are ``[N, K]`` class probabilities (softmax outputs, not logits). The splits
    are blocks of a seeded random permutation of the rows taken in a canonical (sorted)
    order, so the result is the same whatever the order of the samples: class-sorted
    samples would otherwise give one class per split and a score near 1.
    """
    p = as_torch2d(probs, "probs")
    n = p.shape[0]
    if splits < 1:
        raise CbdmError(f"inception score splits must be >= 1, got {splits}")
    if n < splits:
        raise InsufficientSamplesError(f"inception score needs at least as many samples as splits ({splits}), got {n}")
    if (p < 0).any() or not torch.allclose(p.sum(dim=1), torch.ones_like(p[:, 0]), atol=1e-3):
        raise CbdmError("inception score needs class probabilities (rows >= 0 summing to 1), not logits")
    order = _canonical_order(p)[np.random.RandomState(seed).permutation(n)]
    p = p[torch.as_tensor(order, device=p.device)]
    scores = []
    for i in range(splits):
        chunk = p[i * n // splits:(i + 1) * n // splits]
        marginal = chunk.mean(dim=0, keepdim=True)
        # xlogy gives 0 * log 0 = 0 for classes no sample puts mass on.
        kl = (torch.xlogy(chunk, chunk) - torch.xlogy(chunk, marginal)).sum(dim=1)
        scores.append(float(torch.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))
