"""Old home of the ``edm`` backbone, now :mod:`cbdm_core.edm.precond`; kept so imports keep working."""

from ..edm.precond import C_NOISE_SCALE, EDMOptions, EDMPrecond, build_edm, inner_options_with_cond

__all__ = ["C_NOISE_SCALE", "EDMOptions", "EDMPrecond", "build_edm", "inner_options_with_cond"]
