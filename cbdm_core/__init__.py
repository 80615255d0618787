"""cbdm: class-balancing diffusion models for long-tailed class-conditional generation.

Public API (see docs/api.md): :func:`cbdm_loss`, :func:`t2h_targets`,
:class:`LinearSchedule`, :class:`CosineSchedule`, :func:`long_tail_counts`, :func:`sample`,
:func:`load_denoiser`, :func:`load_run`, :class:`SamplingSettings`; for plugins
:data:`hookimpl` (``from cbdm_core import hookimpl``, see docs/plugins.md).
"""

from .errors import CbdmError
from .methods.cbdm import CBDMRegularizer, cbdm_loss
from .methods.t2h import t2h_targets
from .schedules import CosineSchedule, LinearSchedule, NoiseSchedule

__all__ = ["cbdm_loss", "CBDMRegularizer", "t2h_targets", "CbdmError", "LinearSchedule", "CosineSchedule",
           "NoiseSchedule", "long_tail_counts", "sample", "load_denoiser", "load_run", "SamplingSettings",
           "hookimpl"]


def __getattr__(name: str):
    # Lazy: these pull in the data and sampling packages (and pluggy, for hookimpl).
    if name == "hookimpl":
        from .hookspecs import hookimpl

        return hookimpl
    if name == "long_tail_counts":
        from .data.long_tail import long_tail_counts

        return long_tail_counts
    if name == "sample":
        from .sampling import sample

        return sample
    if name == "SamplingSettings":
        from .sampling.settings import SamplingSettings

        return SamplingSettings
    if name in ("load_denoiser", "load_run"):
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module 'cbdm_core' has no attribute {name!r}")
