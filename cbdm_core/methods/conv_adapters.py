"""Low-rank convolution adapters as forward hooks (CM's capacity manipulation).

For a conv with weight ``W`` ``[out, in, k, k]``: rank ``r = max(floor(rho * min(in, out)), 1)``,
``A`` ``[r*k, in*k]`` (Kaiming-normal, a = sqrt(5)), ``B`` ``[out*k, r*k]`` (zeros) and
``delta_W = (B @ A).view(W.shape)``, no scaling (the released code's ``Conv2d_LoRA``).

The conv itself is untouched (its parameters keep their names, so plain DDPM checkpoints
load by name): a forward hook adds ``conv2d(x, delta_W)`` with the conv's stride, padding,
dilation and groups, which equals the conv with ``W + delta_W`` (the conv is linear in W).
The adapters can be switched off for a whole call, or for one slice of rows of a call
(the fast path runs "adapters on" and "adapters off" rows in one batch).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CbdmError


class AdapterSwitch:
    """Shared on/off state of one model's adapters (a plain object: deep copies keep it shared)."""

    def __init__(self) -> None:
        self.enabled = True
        self.off_rows: Optional[slice] = None  # rows of a ``total``-row call run without adapters
        self.total = 0


class LowRankConvDelta(nn.Module):
    """``delta_W = (B @ A).view(W.shape)`` for one conv, applied by :meth:`hook`."""

    def __init__(self, conv: nn.Conv2d, rho: float, switch: AdapterSwitch):
        super().__init__()
        k = conv.kernel_size[0]
        if conv.kernel_size[0] != conv.kernel_size[1] or conv.groups != 1 or conv.padding_mode != "zeros":
            raise CbdmError(f"adapters need a square-kernel, ungrouped, zero-padded conv; got {conv}")
        cin, cout = conv.in_channels, conv.out_channels
        self.rank = max(math.floor(rho * min(cin, cout)), 1)
        self.shape = tuple(conv.weight.shape)
        self.A = nn.Parameter(torch.empty(self.rank * k, cin * k, device=conv.weight.device))
        self.B = nn.Parameter(torch.zeros(cout * k, self.rank * k, device=conv.weight.device))
        nn.init.kaiming_normal_(self.A, a=math.sqrt(5))
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.switch = switch

    def delta(self) -> torch.Tensor:
        return (self.B @ self.A).view(self.shape)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.delta().to(x.dtype), None, self.stride, self.padding, self.dilation)

    def hook(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        # A bound method of this module: a deep copy of the backbone (the EMA) uses its own copy.
        s = self.switch
        if not s.enabled:
            return output
        x = args[0]
        if s.off_rows is None:
            return output + self._conv(x)
        if x.shape[0] != s.total:
            raise RuntimeError(f"adapter row mask set for {s.total} rows, got a call with {x.shape[0]}")
        a, b = s.off_rows.start, s.off_rows.stop
        # Off rows pass through untouched; the delta conv runs on the other rows only.
        delta = self._conv(torch.cat([x[:a], x[b:]]))
        return torch.cat([output[:a] + delta[:a], output[a:b], output[b:] + delta[a:]])


class ConvAdapters(nn.Module):
    """The adapters of one backbone, keyed by conv name (dots become ``__``)."""

    def __init__(self, convs: list[tuple[str, nn.Conv2d]], rho: float):
        super().__init__()
        self.switch = AdapterSwitch()
        self.names = [n for n, _ in convs]
        self.deltas = nn.ModuleDict({n.replace(".", "__"): LowRankConvDelta(c, rho, self.switch) for n, c in convs})
        for (_, conv), delta in zip(convs, self.deltas.values()):
            conv.register_forward_hook(delta.hook)

    @torch.no_grad()
    def merge_into(self, model: nn.Module) -> None:
        """Fold every ``delta_W`` into its conv's weight and switch the hooks off (for sampling only)."""
        modules = dict(model.named_modules())
        for name, delta in zip(self.names, self.deltas.values()):
            w = modules[name].weight
            w.add_(delta.delta().to(w.dtype))
        self.switch.enabled = False
        self.switch.off_rows = None


def select_convs(model: nn.Module, parts: list[str]) -> list[tuple[str, nn.Conv2d]]:
    """The named convs of ``parts`` from the backbone's ``conv_parts()``, in network order."""
    groups = model.conv_parts()
    unknown = [p for p in parts if p not in groups]
    if unknown:
        raise CbdmError(f"unknown cm parts {unknown}; this backbone has {sorted(groups)}")
    return [nc for p in groups if p in parts for nc in groups[p]]
