"""What a metric value means, read from the metric specs (never from lists of names):
which metric returns it, which way it improves, and whether it is a per-class value. The specs
are resolved at the edge (``build_evaluation.metric_specs``) and passed in.

Per-class values are named ``<base>_class_<c>`` (``fid_class_3``); ``<base>_class_mean`` is
their mean and counts as a summary value.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional

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


CHOSEN = "the chosen metrics"
REGISTERED = "any registered metric"  # ``where`` when ``specs`` hold every registered metric
Specs = Mapping[str, MetricSpec]


def provider_of(value: str, specs: Specs) -> Optional[str]:
    """The metric among ``specs`` (``name -> MetricSpec``, resolved at the edge) that declares
    ``value`` (exact names before patterns)."""
    for name, spec in specs.items():
        if value in getattr(spec, "values", {}):
            return name
    for name, spec in specs.items():
        if hasattr(spec, "direction") and spec.direction(value) is not None:
            return name
    return None


def direction_of(value: str, specs: Specs, where: str = CHOSEN) -> Direction:
    """Which way ``value`` improves, as declared by the metric among ``specs`` that returns it.

    ``CbdmError`` when none declares it (a plugin metric must list its values in
    ``MetricSpec.values``); ``where`` names ``specs`` in that message."""
    name = provider_of(value, specs)
    if name is None:
        raise CbdmError(f"{value!r} is not a value declared by {where}; a metric plugin declares its "
                        "values and whether lower or higher is better in MetricSpec.values")
    return specs[name].direction(value)  # type: ignore[return-value]


def rankable(value: str, specs: Specs, where: str = CHOSEN) -> Direction:
    """:func:`direction_of`, refusing values that are not scores (spreads, sample counts)."""
    direction = direction_of(value, specs, where)
    if direction is Direction.NEITHER:
        raise CbdmError(f"{value!r} is not a score (neither lower nor higher is better); choose another value")
    return direction


def summary_values(names: Iterable[str], specs: Specs) -> list[str]:
    """The scores among ``names`` worth a table column: declared, not per class, not NEITHER."""
    out = []
    for n in names:
        if n in out or is_per_class(n):
            continue
        provider = provider_of(n, specs)
        if provider is not None and specs[provider].direction(n) is not Direction.NEITHER:
            out.append(n)
    return out
