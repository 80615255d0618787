"""How the sampling network runs on a CPU, per capability class: one measured table.

Sampling has freedoms training does not (no gradients, weights fixed for the whole call), so
:func:`sampling_network` may hand the sampler a *copy* of the project's U-Net, prepared once per
sampling call:

* ``fp32_channels_last``: an NHWC copy for fp32 sampling (oneDNN's native layout: no reorders
  around every convolution, and the attention rows come out contiguous for SDPA's fused
  kernel). Not bit-identical to the NCHW network: the convolutions sum in another order
  (max relative difference on eps about 2e-6, docs/benchmarks.md).
* ``bf16_weights``: when the caller samples under CPU bf16 autocast, a bf16 copy of the
  weights made once per call (autocast casts them on every forward), run *without* autocast (no
  fp32 residual stream cast before every convolution); GroupNorm keeps fp32 parameters and
  computes in fp32.
* ``bf16_channels_last``: the same bf16 copy in NHWC.
* ``compile``: ``torch.compile`` (inductor) of the copy; off everywhere (slower than eager at
  this size, benchmarks/sampling_forward.py, and a fresh copy per call would recompile).

The capability class is the training table's (:mod:`cbdm_core.training.cpu_choice`). Only the
project's own :class:`~cbdm_core.nets.unet.UNet` on the CPU, without hooks, takes a prepared
copy; any other denoiser (a plugin's network, a wrapped callable, CUDA) runs as given.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..training.cpu_choice import CAPABILITIES, capability_of


@dataclass(frozen=True)
class SamplingChoice:
    """How one capability class runs the sampling network (see the module docstring)."""

    fp32_channels_last: bool
    bf16_weights: bool
    bf16_channels_last: bool
    compile: bool
    evidence: str


# Measured forward CPU-time ratios (1 thread, small U-Net, 32 rows) are in docs/benchmarks.md.
CHOICES: dict[str, SamplingChoice] = {
    "amx": SamplingChoice(
        fp32_channels_last=True, bf16_weights=True, bf16_channels_last=True, compile=False,
        evidence="Xeon with AMX (issue 29), forward CPU time vs the network as given: fp32 NHWC 1.13x; bf16 copy "
                 "NHWC 1.30x of bf16 autocast (NCHW 0.87x, NHWC with bf16 GroupNorm 0.97x); compiled NHWC 0.94x (fp32) "
                 "and 1.06x (bf16) of eager after 13 s CPU of compile per shape. Guided DDIM: 1.11-1.31x fp32, "
                 "1.40-1.43x bf16"),
    "avx512-bf16": SamplingChoice(
        fp32_channels_last=True, bf16_weights=True, bf16_channels_last=True, compile=False,
        evidence="EPYC Zen 4 (issue 29), forward CPU time vs the network as given: fp32 NHWC 1.21-1.25x; bf16 copy "
                 "NHWC 1.06-1.09x of bf16 autocast (NCHW 0.89-0.95x, NHWC with bf16 GroupNorm 0.89-0.92x); compiled "
                 "NHWC 0.93x (fp32) and 0.97x (bf16) of eager after 20 s CPU of compile. Guided DDIM: 1.08-1.20x fp32, "
                 "1.03-1.09x bf16"),
    "fp32-only": SamplingChoice(
        fp32_channels_last=True, bf16_weights=False, bf16_channels_last=False, compile=False,
        evidence="no such CPU at hand: fp32 channels_last from the EPYC's fp32 rows (fp32 arithmetic, no bf16 "
                 "units); bf16 would be emulated, so bf16 autocast keeps today's path"),
}


def sampling_choice(capability: Optional[str] = None) -> SamplingChoice:
    """The row of ``capability`` (default: this CPU's class, from the bf16 probe)."""
    if capability is None:
        from ..training import precision  # read at call time: tests mock the probe

        capability = capability_of(precision.cpu_bf16_support())
    return CHOICES[capability]


def choice_table() -> str:
    """The table as Markdown (docs/benchmarks.md holds a copy; a test keeps them equal)."""
    lines = ["| CPU capability | fp32: channels_last | bf16 autocast: bf16 weight copy | bf16: channels_last | "
             "compile | measured |", "|---|---|---|---|---|---|"]
    onoff = {True: "on", False: "off"}
    for cap in CAPABILITIES:
        c = CHOICES[cap]
        lines.append(f"| `{cap}` | {onoff[c.fp32_channels_last]} | {onoff[c.bf16_weights]} | "
                     f"{onoff[c.bf16_channels_last]} | {onoff[c.compile]} | {c.evidence} |")
    return "\n".join(lines)


class Fp32GroupNorm(nn.GroupNorm):
    """GroupNorm of a bf16 network computed in fp32 (fp32 parameters), output in the input's dtype.

    Why: the statistics of a bf16 residual stream keep fp32 precision, and torch's NHWC bf16
    GroupNorm kernel is slow on the CPU (7x the NCHW one, measured), its fp32 one is not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)


def _to_bf16(net: nn.Module) -> nn.Module:
    """``net`` (a private copy) with bf16 weights, GroupNorm kept in fp32."""
    for module in net.modules():
        if type(module) is nn.GroupNorm:
            module.__class__ = Fp32GroupNorm
            continue
        for p in module.parameters(recurse=False):
            p.data = p.data.to(torch.bfloat16)
        for name, b in module.named_buffers(recurse=False):
            if b.is_floating_point():
                setattr(module, name, b.to(torch.bfloat16))
    return net


def _plain_unet(model: Any) -> bool:
    """The project's U-Net on the CPU with no hooks: the network the table was measured on."""
    from ..nets.unet import UNet

    if type(model) is not UNet or next(model.parameters()).device.type != "cpu":
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class PreparedNetwork:
    """``model``'s prepared copy as a denoiser: ``net(x, t, y, **kw)`` with ``x`` in the caller's dtype
    and layout, eps returned in them. Other attributes are the original model's."""

    def __init__(self, model: nn.Module, net: Any, dtype: torch.dtype, channels_last: bool):
        self._model, self._net, self._dtype, self._channels_last = model, net, dtype, channels_last

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None, **kw: Any) -> torch.Tensor:
        x_in = x.to(self._dtype)
        if self._channels_last:
            x_in = x_in.contiguous(memory_format=torch.channels_last)
        # Without autocast: the bf16 copy's weights already are bf16 and its GroupNorm is fp32 by
        # hand; the fp32 copy is only made when the caller has no autocast on.
        with torch.autocast("cpu", enabled=False):
            eps = self._net(x_in, t, y, **kw)
        return eps.to(x.dtype).contiguous()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not set yet (copy, pickle): no recursion through _model
            raise AttributeError(name)
        return getattr(self._model, name)


def _mode(x: torch.Tensor, choice: SamplingChoice) -> Optional[str]:
    """``fp32``, ``bf16`` or ``None`` (run the model as given) for input ``x`` under the caller's autocast."""
    if x.device.type != "cpu" or x.dtype is not torch.float32:
        return None
    if torch.is_autocast_enabled("cpu"):
        bf16 = torch.get_autocast_dtype("cpu") is torch.bfloat16
        return "bf16" if bf16 and choice.bf16_weights else None
    return "fp32" if choice.fp32_channels_last or choice.compile else None


def prepare_network(model: nn.Module, mode: str, choice: SamplingChoice) -> PreparedNetwork:
    """A new prepared copy of ``model`` for ``mode`` (``fp32`` or ``bf16``) as ``choice`` says."""
    net = copy.deepcopy(model).requires_grad_(False)
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    if mode == "bf16":
        net = _to_bf16(net)
    channels_last = choice.bf16_channels_last if mode == "bf16" else choice.fp32_channels_last
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if choice.compile:
        net = torch.compile(net, dynamic=False)
    return PreparedNetwork(model, net, dtype, channels_last)


def sampling_network(model: Any, x: torch.Tensor, capability: Optional[str] = None) -> Any:
    """The denoiser to sample ``model`` with from input like ``x``: a new prepared copy when the
    capability's row asks for one (see the module docstring), else ``model``.

    A new copy per call, not a cache: it costs 30-50 ms for the small U-Net (a few % of ONE guided
    forward at batch 16, so well under 1% of a sampling call), and can never serve stale weights
    (an EMA update, a ``.data`` edit, a loaded state dict)."""
    choice = sampling_choice(capability)
    mode = _mode(x, choice)
    if mode is None or not _plain_unet(model):
        return model
    return prepare_network(model, mode, choice)
