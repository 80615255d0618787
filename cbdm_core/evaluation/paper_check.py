"""Compare a user's evaluation with a paper's (:mod:`.paper_settings`): fill in what the user
left unset, and list every difference with its effect on the numbers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from .paper_settings import OUR_RESIZE, PaperSettings, base_dataset


@dataclass(frozen=True)
class Deviation:
    """One way the evaluation differs from the paper's; ``fixable``: an option changes it."""

    field: str
    paper: str
    yours: str
    effect: str
    fixable: bool = True

    def message(self, paper: str) -> str:
        return f"--paper {paper}: {self.field} {self.yours} vs the paper's {self.paper}: {self.effect}"


@dataclass
class PaperChoices:
    """The options after ``--paper``: the user's where given, else the paper's."""

    extractor: Optional[str]
    reference_split: str
    metrics: Optional[str]
    deviations: list[Deviation] = field(default_factory=list)


def apply_paper(paper: PaperSettings, dataset: str, extractor: Optional[str], reference_split: str,
                metrics: Optional[str], reference_stats: Optional[Path],
                reference_folder: Optional[Path]) -> PaperChoices:
    """Set the options the user left unset (``reference_split`` ``auto`` counts as unset) to
    the paper's, and list the deviations known before any sample is read."""
    devs: list[Deviation] = []
    base = base_dataset(dataset)
    if base not in paper.datasets:
        devs.append(Deviation("dataset", "/".join(paper.datasets) + " (and -lt)", dataset,
                              "the paper has no number for this dataset: nothing to compare with"))
    split = paper.reference_split if reference_split == "auto" else reference_split
    if reference_folder is not None:
        devs.append(Deviation("reference", f"the balanced {paper.reference_split} split", str(reference_folder),
                              "your own reference images: FID is not the paper's"))
    elif split != paper.reference_split:
        devs.append(Deviation("reference split", paper.reference_split, split,
                              f"FID against the {split} split is not comparable with the paper's, measured "
                              f"against the {paper.reference_split} split (a smaller reference set raises FID)"))
    devs += _stats_deviation(paper, dataset, reference_stats, split)
    chosen = extractor if extractor is not None else paper.extractor
    if chosen != paper.extractor:
        devs.append(Deviation("extractor", paper.extractor, chosen,
                              "features of another network: no FID/IS comparable with the paper's"))
    else:
        devs.append(Deviation("resize", paper.resize, OUR_RESIZE,
                              "same weights, another interpolation: FID differs slightly from the paper's "
                              "code (as pytorch-fid's does from TensorFlow's)", fixable=False))
    return PaperChoices(chosen, split, metrics if metrics is not None else ",".join(paper.metrics), devs)


def _stats_deviation(paper: PaperSettings, dataset: str, stats: Optional[Path], split: str) -> list[Deviation]:
    """The FID statistics: the paper's file, by name (its content cannot be checked here)."""
    expected = paper.stats_file(dataset)
    if expected is None:
        return []
    if stats is None:
        return [Deviation("FID statistics", expected, f"computed here from the {split} split",
                          f"pass --reference-stats {expected} (the CBDM code's stats/) for the paper's "
                          "statistics; the ones computed here use this project's Inception resize")]
    if Path(stats).name != expected:
        return [Deviation("FID statistics", expected, Path(stats).name,
                          "another statistics file (checked by name only): FID is not the paper's")]
    return []


def sample_deviations(paper: PaperSettings, count: int, class_counts: Optional[Sequence[int]]) -> list[Deviation]:
    """The deviations of the samples themselves: their number and their class balance."""
    devs: list[Deviation] = []
    want = paper.num_samples
    if count != want:
        direction = "upward" if count < want else "downward"
        devs.append(Deviation("samples", f"{want:,}", f"{count:,}",
                              f"FID at {count:,} samples is biased {direction} against the paper's {want:,} "
                              "(FID's bias falls with the sample count): compare only at equal counts"))
    if paper.balanced_samples and class_counts and len(set(class_counts)) > 1:
        devs.append(Deviation("class balance", "equal samples per class",
                              f"{min(class_counts)}..{max(class_counts)} per class",
                              "unbalanced samples weigh head classes differently from the paper's balanced set"))
    return devs


def extractor_deviation(paper: PaperSettings, extractor: str, comparable: bool, note: str) -> list[Deviation]:
    """Inception with weights other than the official FID ones."""
    if extractor != paper.extractor or comparable:
        return []
    return [Deviation("Inception weights", paper.weights, "another file", note)]


def paper_record(paper: PaperSettings, deviations: Sequence[Deviation]) -> dict[str, Any]:
    """What ``metrics.json`` records under ``paper``."""
    return {"name": paper.name, "title": paper.title, "confirmed_from_code": paper.confirmed,
            "settings": paper.model_dump(exclude={"name", "title", "confirmed"}),
            "deviations": [asdict(d) for d in deviations], "matches": not any(d.fixable for d in deviations)}
