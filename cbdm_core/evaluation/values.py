"""What a metric value means, read from the metric specs (never from lists of names):
which metric returns it, which way it improves, and whether it is a per-class value.

Per-class values are named ``<base>_class_<c>`` (``fid_class_3``); ``<base>_class_mean`` is
their mean and counts as a summary value.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

from ..errors import CbdmError
from ..interfaces import Direction, MetricSpec

CLASS_INFIX = "_class_"


def is_per_class(name: str) -> bool:
    """``fid_class_3`` yes; ``fid_class_mean``, ``fid_tail``, ``fid`` no."""
    return CLASS_INFIX in name and not name.endswith(CLASS_INFIX + "mean")


def split_per_class(name: str) -> Optional[tuple[str, int]]:
    """``"fid_class_3"`` -> ``("fid", 3)``; ``None`` for any other name."""
    base, sep, tail = name.rpartition(CLASS_INFIX)
    return (base, int(tail)) if sep and tail.isdigit() else None


def metric_specs(metrics: Optional[Sequence[str]] = None) -> dict[str, MetricSpec]:
    """The specs of ``metrics`` (all registered ones for ``None``)."""
    from ..registry import get_registry

    reg = get_registry()
    names = reg.names("metric") if metrics is None else list(metrics)
    return {n: reg.get("metric", n).obj for n in names}


def provider_of(value: str, metrics: Optional[Sequence[str]] = None) -> Optional[str]:
    """The metric among ``metrics`` that declares ``value`` (exact names before patterns)."""
    specs = metric_specs(metrics)
    for name, spec in specs.items():
        if value in getattr(spec, "values", {}):
            return name
    for name, spec in specs.items():
        if hasattr(spec, "direction") and spec.direction(value) is not None:
            return name
    return None


def direction_of(value: str, metrics: Optional[Sequence[str]] = None) -> Direction:
    """Which way ``value`` improves, as declared by the metric that returns it.

    ``CbdmError`` when no metric among ``metrics`` declares it (a plugin metric must list its
    values in ``MetricSpec.values``)."""
    name = provider_of(value, metrics)
    if name is None:
        where = "the chosen metrics" if metrics is not None else "any registered metric"
        raise CbdmError(f"{value!r} is not a value declared by {where}; a metric plugin declares its "
                        "values and whether lower or higher is better in MetricSpec.values")
    return metric_specs([name])[name].direction(value)  # type: ignore[return-value]


def rankable(value: str, metrics: Optional[Sequence[str]] = None) -> Direction:
    """:func:`direction_of`, refusing values that are not scores (spreads, sample counts)."""
    direction = direction_of(value, metrics)
    if direction is Direction.NEITHER:
        raise CbdmError(f"{value!r} is not a score (neither lower nor higher is better); choose another value")
    return direction


def summary_values(names: Iterable[str], metrics: Optional[Sequence[str]] = None) -> list[str]:
    """The scores among ``names`` worth a table column: declared, not per class, not NEITHER."""
    out = []
    for n in names:
        if n in out or is_per_class(n):
            continue
        provider = provider_of(n, metrics)
        if provider is not None and metric_specs([provider])[provider].direction(n) is not Direction.NEITHER:
            out.append(n)
    return out
