"""Speed settings of a training step: bf16 autocast, channels_last, torch.compile.

:func:`resolve_precision` turns the ``perf`` section of the config into concrete
choices for a device. Weights, optimizer state, EMA and the loss stay fp32; autocast
only lowers the precision of the network's matmuls and convolutions.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Optional

import torch

from ..errors import CbdmError


@dataclass(frozen=True)
class Precision:
    """Concrete speed choices for one device.

    Attributes:
        device_type: ``cuda`` or ``cpu`` (what autocast is told).
        amp_dtype: the autocast dtype (``torch.bfloat16``) or None for fp32.
        channels_last: keep conv weights and activations in NHWC.
        compile: wrap the forward in ``torch.compile``.
    """

    device_type: str = "cpu"
    amp_dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    compile: bool = False

    def autocast(self) -> ContextManager:
        """The forward's autocast context (a no-op context without amp)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.amp_dtype)

    def describe(self) -> str:
        amp = "bf16" if self.amp_dtype is torch.bfloat16 else "fp32"
        return f"{amp}{', channels_last' if self.channels_last else ''}{', compiled' if self.compile else ''}"


def resolve_precision(perf: Any, device: torch.device) -> Precision:
    """``perf`` (a :class:`~cbdm_core.config.PerfConfig` or anything with ``amp``,
    ``compile`` and ``channels_last``) resolved for ``device``."""
    cuda = device.type == "cuda"
    amp = getattr(perf, "amp", "auto")
    if amp == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise CbdmError("perf.amp=bf16: this GPU has no bfloat16 support; use perf.amp=off")
        amp_dtype: Optional[torch.dtype] = torch.bfloat16
    elif amp == "auto":
        # CPU bf16 autocast is only a win on CPUs with bf16 matrix units; measure before turning it on.
        amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
    else:
        amp_dtype = None
    compile_opt = getattr(perf, "compile", "auto")
    compiled = compile_opt == "on" or (compile_opt == "auto" and cuda)
    cl = getattr(perf, "channels_last", "auto")
    channels_last = cl == "on" or (cl == "auto" and cuda)
    return Precision(device_type=device.type, amp_dtype=amp_dtype, channels_last=channels_last, compile=compiled)


def to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """NHWC weights in place (parameters keep their identity, so optimizers and EMA still see them)."""
    return module.to(memory_format=torch.channels_last)


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimizer state the memory layout of its parameter.

    A checkpoint stores contiguous tensors; fused/foreach Adam is fastest (and the
    fused kernel is only guaranteed to work) when state and parameter strides agree.
    """
    for p, state in optimizer.state.items():
        for key, value in list(state.items()):
            if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def warn_eager(exc: BaseException) -> None:
    warnings.warn(f"torch.compile failed ({_first_line(exc)}); continuing in eager mode",
                  RuntimeWarning, stacklevel=3)


def compile_module(module: torch.nn.Module, enabled: bool, **kwargs: Any) -> tuple[Callable, bool]:
    """``(torch.compile(module), True)``, or ``(module, False)`` when disabled or when
    ``torch.compile`` itself raises (a warning says why). Compilation happens lazily
    at the first call; :class:`~cbdm_core.training.step.TrainStep` falls back to eager
    if that first call fails."""
    if not enabled:
        return module, False
    try:
        return torch.compile(module, **kwargs), True
    except Exception as exc:  # any failure of the compiler stack must not stop training
        warn_eager(exc)
        return module, False
