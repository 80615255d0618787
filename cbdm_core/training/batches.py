"""Deterministic batch indices: every step's batch is a function of (seed, step).

That makes resume exact without saving data-loader state.
"""

from __future__ import annotations

from typing import Optional

import torch

_MIX = 0x9E3779B1  # odd constant so (seed, step) pairs map to distinct seeds


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    return (seed * _MIX + step * 1_000_003 + stream * 7919) % (2**63 - 1)


class BatchIndexer:
    """Batches of dataset indices.

    Without weights: epoch-wise random permutations (each image once per epoch).
    With per-example weights (re-sampling): independent draws with replacement.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, weights: Optional[torch.Tensor] = None):
        self.n = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.weights = None if weights is None else weights.double().cpu()
        self._perm_epoch = -1
        self._perm: Optional[torch.Tensor] = None

    def _perm_for(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(step_seed(self.seed, epoch, stream=1))
            self._perm = torch.randperm(self.n, generator=g)
            self._perm_epoch = epoch
        return self._perm

    def indices(self, step: int) -> torch.Tensor:
        if self.weights is not None:
            g = torch.Generator().manual_seed(step_seed(self.seed, step, stream=2))
            return torch.multinomial(self.weights, self.batch_size, replacement=True, generator=g)
        start = step * self.batch_size
        out = []
        while len(out) < self.batch_size:
            epoch, offset = divmod(start, self.n)
            take = min(self.batch_size - len(out), self.n - offset)
            out.extend(self._perm_for(epoch)[offset:offset + take].tolist())
            start += take
        return torch.tensor(out, dtype=torch.long)
