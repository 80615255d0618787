"""Sampling precision: ``fp32`` (the default) or ``bf16``, the autocast a sampling call runs under.

Under ``bf16`` the network runs in bfloat16 (on the CPU as :mod:`.cpu_choice`'s prepared bf16
copy); the sampler's own arithmetic (the x_t updates) and guidance's combination of the two
predictions stay fp32, because the network's eps is handed back in x's dtype.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, ContextManager, Optional

import torch

from ..errors import CbdmError
from .cpu_choice import PreparedNetwork

PRECISIONS = ("fp32", "bf16")


@functools.lru_cache(maxsize=None)
def _warn_emulated() -> None:
    # Once per process: sample folders call the sampler once per batch.
    warnings.warn("precision bf16: this CPU has no native bf16 instructions, so bf16 is emulated "
                  "(correct but slower than fp32); use --precision fp32", RuntimeWarning, stacklevel=2)


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse ``precision`` where it cannot run on ``device`` (one line); warn where it is emulated."""
    if precision not in PRECISIONS:
        raise CbdmError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise CbdmError("precision bf16: this GPU has no bfloat16 support; use --precision fp32")
        return
    if device.type != "cpu":
        raise CbdmError(f"precision bf16 samples on cpu or cuda, not {device.type}; use --precision fp32")
    from ..training import precision as probe  # read at call time: tests mock the probe

    if not probe.cpu_bf16_support():
        _warn_emulated()


def precision_context(precision: str, device: torch.device) -> ContextManager:
    """The autocast a sampling call on ``device`` runs under (a no-op context for fp32)."""
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class Fp32Eps:
    """A network run under autocast whose eps comes back in x's dtype (guidance combines fp32 eps)."""

    def __init__(self, model: Any):
        self._model = model

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None, **kw: Any) -> Any:
        return self._model(x, t, y, **kw).to(x.dtype)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not set yet (copy, pickle): no recursion through _model
            raise AttributeError(name)
        return getattr(self._model, name)


def eps_in_x_dtype(net: Any, precision: str) -> Any:
    """``net`` whose eps is in x's dtype: the prepared CPU copy already is, and fp32 needs no cast."""
    if precision == "fp32" or isinstance(net, PreparedNetwork):
        return net
    return Fp32Eps(net)
