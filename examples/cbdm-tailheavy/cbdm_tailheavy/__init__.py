"""A label distribution proportional to 1 / n_c: y' is drawn mostly from tail classes."""

from __future__ import annotations

from typing import Optional

import torch

from cbdm_core import hookimpl
from cbdm_core.label_distributions import power_distribution


def inverse_frequency(class_counts: torch.Tensor, arg: Optional[str] = None) -> torch.Tensor:
    """Probabilities proportional to 1 / n_c (classes with no images get none)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if bool((counts == 0).any()):
        counts = torch.where(counts == 0, torch.inf, counts)
    return power_distribution(counts, -1.0)


@hookimpl
def register_components(register) -> None:
    register("label_distribution", "inverse", inverse_frequency, description="proportional to 1/n_c (example plugin)")
