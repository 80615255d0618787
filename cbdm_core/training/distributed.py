"""Multi-process training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node=N -m cbdm_cli train ...`` starts N ranks. Every rank
builds the same GLOBAL batch (``optim.batch_size``) from the same seed, draws the
step's randomness (label dropout, t, noise, every method's draws such as y') for the whole global batch, and
computes the loss over its contiguous slice of ``B / N`` rows. With mean losses and
DDP's gradient averaging, N ranks x B/N rows give the gradients of 1 process x B rows
(up to float rounding), whatever N is. Only rank 0 writes files.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from ..device import DistContext, env_world, setup_distributed
from ..objectives import DiffusionObjective, LossTerms

# DistContext, env_world and setup_distributed live in cbdm_core.device (evaluation and sampling use
# them too); they stay importable from here for existing code.
__all__ = ["DistContext", "ShardedObjective", "env_world", "setup_distributed", "wrap_ddp"]


def wrap_ddp(module: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """DDP around ``module`` for a multi-process job; ``module`` itself otherwise."""
    if not ctx.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device is not None and ctx.device.type == "cuda" else None
    # 1x1-conv gradients from oneDNN have size-1 dims with other strides than the bucket: same memory
    # layout, but DDP warns about it on every rank.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(module, device_ids=ids, gradient_as_bucket_view=True)


# -- global draws, local rows -------------------------------------------------------------------------------


@dataclass
class ShardedObjective:
    """Rows ``[lo, hi)`` of ``objective`` evaluated on a global batch.

    The random draws happen in the same order and with the same shapes as a single
    process's ``objective(model, x0, y, cond=cond)`` on the whole batch (keep mask, then
    the base loss's t and noise, then each method's target and extra labels), all on the
    GLOBAL batch, so every rank sees the single-process numbers and keeps its own rows.
    A method that looks across the batch (T2H's candidate pool) therefore sees the whole
    global batch, not this rank's shard. The loss is the mean over this rank's rows; DDP's
    gradient average then equals the global mean's gradient.
    """

    objective: DiffusionObjective
    lo: int
    hi: int

    def __call__(self, model, x0: torch.Tensor, y: torch.Tensor, *,
                 cond: Optional[torch.Tensor] = None, step: Optional[int] = None) -> LossTerms:
        lo, hi = self.lo, self.hi
        ctx, extras = self.objective.prepare(x0, y, step=step)
        local = [None if e is None else e[..., lo:hi] for e in extras]
        return self.objective.evaluate(model, ctx.rows(lo, hi), local, cond=None if cond is None else cond[lo:hi])
