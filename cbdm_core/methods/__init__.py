"""Training methods (kind ``method``): the seam in :mod:`.base`, one module per method."""

from .base import MethodBuildContext, MethodSpec, PassOutputs, StepContext, TrainingMethod

__all__ = ["MethodBuildContext", "MethodSpec", "PassOutputs", "StepContext", "TrainingMethod"]
