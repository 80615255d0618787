"""``cbdm eval --paper NAME``: the paper's evaluation settings for the options left unset, and
one warning line per difference between the user's evaluation and the paper's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from cbdm_core.evaluation.paper_check import Deviation, PaperChoices, apply_paper
from cbdm_core.evaluation.paper_settings import PAPERS, PaperSettings, get_paper

from .eval_support import Reporter

if TYPE_CHECKING:
    from cbdm_core.evaluation import EvalResult

PAPER_HELP = (f"Evaluate as a paper did ({', '.join(sorted(PAPERS))}): its reference split, metrics and "
              "extractor for the options you leave unset; one warning per setting that differs "
              "(reference, FID statistics, sample count, extractor), recorded in metrics.json.")


@dataclass
class PaperRun:
    """The paper, the options it chose and the deviations found so far."""

    settings: PaperSettings
    choices: PaperChoices


def paper_callback(ctx: object, param: object, value: Optional[str]) -> Optional[PaperSettings]:
    """``--paper NAME`` -> its settings; an unknown name is a one-line error before any work."""
    return None if value is None else get_paper(value)


def start_paper(paper: Optional[PaperSettings], dataset: str, extractor: Optional[str], reference_split: str,
                metrics: Optional[str], reference_stats: Optional[Path], reference_folder: Optional[Path],
                reporter: Reporter) -> tuple[Optional[PaperRun], Optional[str], str, Optional[str]]:
    """``(run, extractor, reference_split, metrics)``: the options resolved against ``paper``
    (the options as given without ``--paper``); reports the deviations known before the
    samples are read."""
    if paper is None:
        return None, extractor, reference_split, metrics
    choices = apply_paper(paper, dataset, extractor, reference_split, metrics, reference_stats, reference_folder)
    reporter.status(f"--paper {paper.name}: {paper.title}: reference {choices.reference_split} split, "
                    f"metrics {choices.metrics}, {paper.num_samples:,} samples"
                    + ("" if paper.confirmed else f" (NOT read from the paper's code: {paper.note})"))
    _report(paper, choices.deviations, reporter)
    return PaperRun(paper, choices), choices.extractor, choices.reference_split, choices.metrics


def finish_paper(run: Optional[PaperRun], result: "EvalResult", reporter: Reporter) -> None:
    """Add the deviations of the samples and the extractor, and record all in ``result.paper``."""
    from cbdm_core.evaluation.paper_check import extractor_deviation, paper_record, sample_deviations

    if run is None:
        return
    paper = run.settings
    found = sample_deviations(paper, int(result.samples["count"]), result.sample_counts)
    found += extractor_deviation(paper, result.extractor.name, result.extractor.comparable, result.extractor.note)
    _report(paper, found, reporter)
    run.choices.deviations.extend(found)
    result.paper = paper_record(paper, run.choices.deviations)
    fixable = sum(d.fixable for d in run.choices.deviations)
    reporter.say(f"--paper {paper.name}: " + (f"{fixable} setting(s) differ from the paper's evaluation "
                                               "(metrics.json: paper.deviations)" if fixable else
                                               "the paper's evaluation settings (up to the extractor's resize)"))


def _report(paper: PaperSettings, deviations: list[Deviation], reporter: Reporter) -> None:
    """A warning per deviation an option can change; a note for the others."""
    for d in deviations:
        if d.fixable:
            reporter.warning(d.message(paper.name))
        else:
            reporter.status(f"note: {d.message(paper.name)}")
