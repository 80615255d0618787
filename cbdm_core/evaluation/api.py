"""The programmatic evaluation entry points: ``evaluate(samples, options)`` and
``prepare_reference(options)`` as users call them from their own code, by the names in
``options``. They resolve those names at the edge (:func:`cbdm_core.build_evaluation.resolve_evaluation`)
when no ``components`` are given and hand the objects to the engine, which reads no registry
(as :mod:`cbdm_core.sampling.api` does for sampling)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Union

from .engine import EvalOptions, EvalResult
from .engine import evaluate as _evaluate
from .inputs import SampleSet
from .prepared import PreparedReference
from .prepared import prepare_reference as _prepare_reference
from .resolved import EvalComponents


def evaluate(samples: Union[Path, str, SampleSet], options: EvalOptions, *,
             components: Optional[EvalComponents] = None, reference: Optional[PreparedReference] = None,
             **kwargs: Any) -> EvalResult:
    """:func:`cbdm_core.evaluation.engine.evaluate`, resolving ``options``' names first when
    ``components`` is not given."""
    from ..build_evaluation import resolve_evaluation  # here: build_evaluation imports this package

    return _evaluate(samples, options, components=components or resolve_evaluation(options),
                     reference=reference, **kwargs)


def prepare_reference(options: EvalOptions, components: Optional[EvalComponents] = None, *,
                      on_status: Optional[Callable[[str], None]] = None, ctx: Optional[Any] = None) -> PreparedReference:
    """:func:`cbdm_core.evaluation.prepared.prepare_reference`, resolving ``options``' names
    first when ``components`` is not given."""
    from ..build_evaluation import resolve_evaluation

    return _prepare_reference(options, components or resolve_evaluation(options), on_status=on_status, ctx=ctx)
