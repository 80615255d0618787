"""cbdm: class-balancing diffusion models for long-tailed class-conditional generation.

Public API (see docs/api.md): :func:`cbdm_loss`, :func:`t2h_targets`,
:class:`LinearSchedule`, :class:`CosineSchedule`, :func:`long_tail_counts`, :func:`sample`,
:func:`load_denoiser`, :func:`load_run`, :class:`SamplingSettings`; for plugins
:data:`hookimpl` (``from cbdm_core import hookimpl``, see docs/plugins.md).
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import CbdmError

__all__ = ["cbdm_loss", "CBDMRegularizer", "t2h_targets", "CbdmError", "LinearSchedule", "CosineSchedule",
           "NoiseSchedule", "long_tail_counts", "sample", "load_denoiser", "load_run", "SamplingSettings",
           "SamplerSettings", "SampleJob", "hookimpl"]

# Every public name is imported on first use: importing the package (as `cbdm --help` does for
# CbdmError) must not load torch, which takes a second or more.
_LAZY: dict[str, str] = {
    "cbdm_loss": ".methods.cbdm",
    "CBDMRegularizer": ".methods.cbdm",
    "t2h_targets": ".methods.t2h",
    "LinearSchedule": ".schedules",
    "CosineSchedule": ".schedules",
    "NoiseSchedule": ".schedules",
    "long_tail_counts": ".data.long_tail",
    "sample": ".sampling",
    "SamplingSettings": ".sampling.settings",
    "SamplerSettings": ".sampling.settings",
    "SampleJob": ".sampling.settings",
    "load_denoiser": ".run",
    "load_run": ".run",
    "hookimpl": ".hookspecs",  # pluggy: loaded only by plugin modules
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cbdm_core' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
