"""Target label distributions for y' (the CBDM adjustment target)."""

from __future__ import annotations

import math
from typing import Optional

import torch

from .errors import CbdmError


def _counts(class_counts: torch.Tensor) -> torch.Tensor:
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.ndim != 1 or len(counts) == 0:
        raise CbdmError("class counts must be a non-empty 1-D list")
    if bool((counts < 0).any()):
        raise CbdmError("class counts must be non-negative")
    return counts


def power_distribution(class_counts: torch.Tensor, q: float) -> torch.Tensor:
    """Probabilities proportional to ``n_c ** q`` (q=1: train, 0.5: sqrt, 0: uniform)."""
    counts = _counts(class_counts)
    if q == 0:
        weights = torch.ones_like(counts)
    else:
        weights = _power_weights(counts, q)
    total = weights.sum()
    if not bool(total > 0):
        raise CbdmError("label distribution has no mass: every class count is zero")
    return (weights / total).to(torch.float32)


def _power_weights(counts: torch.Tensor, q: float) -> torch.Tensor:
    """``n_c ** q`` scaled so the largest weight is 1, in log space: finite for any finite q
    (``pow:1e308`` overflowed to inf/inf = NaN and crashed the sampler of y')."""
    c = counts.to(torch.float64)
    if q < 0 and bool((c == 0).any()):
        raise CbdmError(f"label distribution with exponent {q}: an empty class would get infinite weight")
    if not bool((c > 0).any()):
        return torch.zeros_like(c)  # no mass: refused by the caller
    logs = torch.log(c)  # -inf for an empty class: weight 0 for q > 0
    ref = logs[c > 0].max() if q > 0 else logs.min()
    return torch.exp(q * (logs - ref))  # q * (<= 0 difference) <= 0: never overflows


def train_distribution(class_counts: torch.Tensor, arg: Optional[str] = None) -> torch.Tensor:
    """Empirical class frequencies of the training set."""
    return power_distribution(class_counts, 1.0)


def balanced_distribution(class_counts: torch.Tensor, arg: Optional[str] = None) -> torch.Tensor:
    """Uniform over classes."""
    return power_distribution(class_counts, 0.0)


def sqrt_distribution(class_counts: torch.Tensor, arg: Optional[str] = None) -> torch.Tensor:
    """Proportional to the square root of the class counts."""
    return power_distribution(class_counts, 0.5)


def pow_distribution(class_counts: torch.Tensor, arg: Optional[str] = None) -> torch.Tensor:
    """``pow:q``: proportional to ``n_c ** q``."""
    if arg is None:
        raise CbdmError("label distribution 'pow' needs an exponent, e.g. pow:0.5")
    try:
        q = float(arg)
    except ValueError:
        raise CbdmError(f"label distribution 'pow:{arg}': exponent must be a number") from None
    if not math.isfinite(q):
        raise CbdmError(f"label distribution 'pow:{arg}': exponent must be a finite number")
    return power_distribution(class_counts, q)


def resolve_label_distribution(name: str, class_counts: torch.Tensor) -> torch.Tensor:
    """Probabilities of the registered distribution ``name`` (``"bal"``, ``"pow:0.3"``, ...)."""
    from .registry import get_registry, split_name

    factory = get_registry().get("label_distribution", name).obj
    return checked_distribution(name, factory(class_counts, split_name(name)[1]), len(class_counts))


def checked_distribution(name: str, probs, num_classes: int) -> torch.Tensor:
    """A label distribution's output as float32 ``[C]``, or one line naming ``name`` when it is not
    ``num_classes`` finite, non-negative weights with a positive sum (a plugin's slip surfaced as
    another component's error, or as torch's "invalid multinomial distribution" after the data loaded)."""
    try:
        p = torch.as_tensor(probs, dtype=torch.float32).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise CbdmError(f"label distribution {name!r} returned a {type(probs).__name__}, not probabilities") from None
    if p.shape != (num_classes,):
        raise CbdmError(f"label distribution {name!r} returned shape {tuple(p.shape)} for {num_classes} classes")
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or not bool(p.sum() > 0):
        raise CbdmError(f"label distribution {name!r} returned weights that are not finite, non-negative and of "
                        "positive sum")
    return p
