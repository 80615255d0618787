"""Where a process computes: the device a name resolves to, and this process's place in a
``torchrun`` job (:class:`DistContext`), shared by training, sampling and evaluation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist

from .errors import CbdmError

T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a clear error otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CbdmError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CbdmError("device cuda requested but no CUDA GPU is available")
    return device


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
