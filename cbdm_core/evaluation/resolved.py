"""An evaluation's names resolved: what the engine receives instead of the names of
:class:`~cbdm_core.evaluation.EvalOptions` (resolved once, at the edge, by
:func:`cbdm_core.build_evaluation.resolve_evaluation`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..errors import CbdmError
from ..interfaces import MetricSpec

if TYPE_CHECKING:  # the kinds' contracts; not imported at run time (components imports the methods)
    from ..components import FeatureExtractorFactory

DatasetResolver = Callable[[str], Any]
"""``name -> DatasetFactory``: for the dataset names an evaluation meets only while it runs
(the training set a sample manifest's checkpoint names), as ``Components.label_distribution``."""


@dataclass(frozen=True)
class EvalComponents:
    """Every component an evaluation uses, resolved from its options' names once.

    Attributes:
        metrics: ``name -> MetricSpec`` of (at least) the chosen metrics.
        extractor: the feature extractor's factory (``EvalOptions.extractor``).
        datasets: the dataset resolver for the reference, a reference folder and training sets.
    """

    metrics: Mapping[str, MetricSpec]
    extractor: "FeatureExtractorFactory"
    datasets: DatasetResolver

    def specs_for(self, names: Sequence[str]) -> dict[str, MetricSpec]:
        """The specs of ``names``, in order; resolved for other options is a programming error."""
        missing = [n for n in names if n not in self.metrics]
        if missing:
            raise CbdmError(f"metric {missing[0]!r} was not resolved for this evaluation; resolve the "
                            "components from the same options (resolve_evaluation)")
        return {n: self.metrics[n] for n in names}
