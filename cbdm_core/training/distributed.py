"""Multi-process training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node=N -m cbdm_cli train ...`` starts N ranks. Every rank
builds the same GLOBAL batch (``optim.batch_size``) from the same seed, draws the
step's randomness (label dropout, t, noise, every method's draws such as y') for the whole global batch, and
computes the loss over its contiguous slice of ``B / N`` rows. With mean losses and
DDP's gradient averaging, N ranks x B/N rows give the gradients of 1 process x B rows
(up to float rounding), whatever N is. Only rank 0 writes files.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist

from ..errors import CbdmError
from ..objectives import DiffusionObjective, LossTerms

T = TypeVar("T")


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` without it."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise CbdmError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from None
    return rank, world, local


@dataclass
class DistContext:
    """This process's place in the job. A single process has ``world == 1`` and no process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: Optional[torch.device] = None
    owns_group: bool = False
    control: Any = None  # a gloo group for small CPU-side agreements (stop flags, errors)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def shard(self, batch_size: int) -> tuple[int, int]:
        """This rank's rows ``[lo, hi)`` of the global batch."""
        if batch_size % self.world:
            raise CbdmError(f"optim.batch_size={batch_size} (the global batch) must be divisible by the "
                            f"number of processes ({self.world})")
        per = batch_size // self.world
        return self.rank * per, (self.rank + 1) * per

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.control)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on some rank (a CPU collective, no GPU sync)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return bool(t.item())

    def any_flags(self, *flags: bool) -> tuple[bool, ...]:
        """:meth:`any` for several flags in one collective."""
        if not self.enabled:
            return tuple(bool(f) for f in flags)
        t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return tuple(bool(v) for v in t.tolist())

    def any_device(self, flag: torch.Tensor) -> torch.Tensor:
        """Logical OR of a bool device tensor over ranks (stays on the device)."""
        if not self.enabled:
            return flag
        t = flag.to(torch.int32).reshape(1)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t[0].bool()

    def all_device(self, flag: torch.Tensor) -> torch.Tensor:
        """Logical AND of a bool device tensor over ranks."""
        return ~self.any_device(~flag) if self.enabled else flag

    def mean(self, values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Average scalar tensors over ranks (one collective for all of them)."""
        if not self.enabled or not values:
            return list(values)
        stacked = torch.stack([v.detach().float().reshape(()) for v in values])
        dist.all_reduce(stacked)
        return list((stacked / self.world).unbind())

    def main_first(self, fn: Callable[[], T], *, others: bool = True) -> Optional[T]:
        """Run ``fn`` on rank 0, then (if ``others``) on the other ranks.

        A :class:`CbdmError` on rank 0 is raised on every rank, so no rank waits forever.
        Without ``others`` the other ranks get None.
        """
        if not self.enabled:
            return fn()
        result: Optional[T] = None
        message: list[Optional[str]] = [None]
        if self.is_main:
            try:
                result = fn()
            except CbdmError as exc:
                message = [str(exc)]
        dist.broadcast_object_list(message, src=0, group=self.control)
        if message[0] is not None:
            raise CbdmError(message[0])
        if not self.is_main and others:
            result = fn()
        return result

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device: torch.device) -> DistContext:
    """Join the job torchrun started (if any). ``device`` is the resolved training device;
    on CUDA each rank uses ``cuda:LOCAL_RANK``."""
    rank, world, local = env_world()
    if world <= 1:
        return DistContext(device=device)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise CbdmError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPUs are visible")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
    if dist.get_world_size() != world:
        raise CbdmError(f"WORLD_SIZE={world} but the process group has {dist.get_world_size()} ranks")
    control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return DistContext(rank=rank, world=world, local_rank=local, device=device, owns_group=owns, control=control)


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
                 cond: Optional[torch.Tensor] = None) -> LossTerms:
        lo, hi = self.lo, self.hi
        ctx, extras = self.objective.prepare(x0, y)
        local = [None if e is None else e[..., lo:hi] for e in extras]
        return self.objective.evaluate(model, ctx.rows(lo, hi), local, cond=None if cond is None else cond[lo:hi])
