"""The outputs of ``cbdm compare``: ``compare.json`` (every number), ``compare.md`` (one table
per primary endpoint with the methods as rows and every seed's value, then an appendix of every
other value) and per-class plots against training frequency (one line per method).

Statistics (:mod:`.stats`): per-seed values, mean ± sd, paired differences to the baseline with
a t-interval over seeds and a paired t-test; for rates, the image-level CMH test stratified by
seed x class and a two-stage bootstrap, both from the sample folders' ``records.csv``; Holm's
correction over the primary tests (primary endpoints x methods). The parts: the document
(:mod:`.compare_document`), the rates recounted from images (:mod:`.compare_rates`), the
markdown (:mod:`.compare_markdown`, :mod:`.compare_tables`); plots: :mod:`.compare_plots`,
:mod:`.curves`, :mod:`.memorization_evidence`. The names below stay importable from here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..atomic import atomic_write_text
from .compare_document import FORMAT, build_document, reported_values
from .compare_markdown import markdown
from .compare_rates import GROUP_SUFFIXES, group_of, image_level, rate_of, read_records
from .compare_tables import accuracy_ceiling_table, appendix_table, primary_table

if TYPE_CHECKING:
    from .compare_plan import StudyPlan

COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"
PLOTS = "plots"

# The old private names, for code written against the single module.
_group_of = group_of
_records = read_records
_primary_table = primary_table
_appendix = appendix_table
_accuracy_ceiling = accuracy_ceiling_table


def write_outputs(plan: "StudyPlan", results: dict[str, dict[str, Any]], out_dir: Path,
                  classifier: Optional[dict[str, Any]] = None,
                  heldout: Optional[dict[str, Any]] = None,
                  study_time: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Write compare.json, compare.md and the plots; return the document. ``study_time``: where the
    wall time went (:func:`.study_time.time_summary`), when it was timed."""
    from .compare_plots import write_plots
    from .curves import write_curve_plots
    from .memorization_evidence import write_ratio_histogram

    doc = build_document(plan, results, classifier, heldout)
    if study_time is not None:
        doc["study_time"] = study_time
    plots = write_plots(doc, out_dir / PLOTS) + write_curve_plots(doc, out_dir / PLOTS)
    hist = write_ratio_histogram(results, read_records, heldout, out_dir / PLOTS / "memorization-d1-d2.png")
    plots += [hist] if hist is not None else []
    doc["plots"] = [str(p) for p in plots]
    atomic_write_text(out_dir / COMPARE_JSON, json.dumps(doc, indent=2, allow_nan=False, default=str) + "\n")
    atomic_write_text(out_dir / COMPARE_MD, markdown(doc))
    return doc


__all__ = ["COMPARE_JSON", "COMPARE_MD", "FORMAT", "GROUP_SUFFIXES", "PLOTS", "build_document", "group_of",
           "image_level", "markdown", "rate_of", "read_records", "reported_values", "write_outputs"]
