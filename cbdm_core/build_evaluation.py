"""Build an evaluation's components from its :class:`~cbdm_core.evaluation.EvalOptions`: the
edge where the metric, extractor and dataset names of an evaluation become objects.

Like :mod:`cbdm_core.build` for training, this module (with the CLI and the experiment
planners) reads the registry; the evaluation engine, the prepared reference and the reports
receive the objects (:class:`~cbdm_core.evaluation.resolved.EvalComponents`, metric specs).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from .errors import CbdmError
from .evaluation.engine import DEFAULT_METRICS, EvalOptions, check_metric_options, check_request
from .evaluation.resolved import DatasetResolver, EvalComponents
from .interfaces import MetricSpec
from .registry import get_registry


def metric_specs(names: Optional[Sequence[str]] = None) -> dict[str, MetricSpec]:
    """``name -> MetricSpec`` of ``names`` (every registered metric for ``None``)."""
    reg = get_registry()
    chosen = reg.names("metric") if names is None else list(names)
    return {n: reg.get("metric", n).obj for n in chosen}


def resolve_metrics(names: Optional[Sequence[str]]) -> list[str]:
    """Validated metric names (registered ``metric`` components), duplicates removed;
    ``None`` means :data:`~cbdm_core.evaluation.engine.DEFAULT_METRICS`."""
    chosen = list(DEFAULT_METRICS) if names is None else [n.strip() for n in names if n.strip()]
    if not chosen:
        raise CbdmError("no metric selected; choose from: " + ", ".join(get_registry().names("metric")))
    out: list[str] = []
    for name in chosen:
        get_registry().get("metric", name)  # unknown: error listing the choices
        if name not in out:
            out.append(name)
    return out


def check_metric_option_names(options: dict[str, dict[str, Any]]) -> None:
    """Every metric named in ``options`` registered, and its options valid for its spec."""
    for metric, opts in options.items():  # one at a time: the first problem in the user's order
        check_metric_options({metric: opts}, metric_specs([metric]))


def check_extractor(name: str) -> Any:
    """The registered feature extractor factory ``name`` (unknown: error listing the choices)."""
    return get_registry().get("feature_extractor", name).obj


def dataset_resolver() -> DatasetResolver:
    """``name -> DatasetFactory``, read from the registry when a name is met (as ``load_dataset``)."""
    return lambda name: get_registry().get("dataset", name).obj


def resolve_evaluation(options: EvalOptions) -> EvalComponents:
    """The components of ``options``, every name and option checked in the order the engine
    always checked them (metrics, their options, split and batch size, extractor), before any loading."""
    metrics = resolve_metrics(options.metrics)
    check_metric_option_names(options.metric_options)
    check_request(options)
    extractor = check_extractor(options.extractor)
    return EvalComponents(metrics=metric_specs(metrics), extractor=extractor, datasets=dataset_resolver())
