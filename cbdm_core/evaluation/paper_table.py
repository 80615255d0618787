"""The Markdown table of :data:`~.paper_settings.PAPERS` that docs/evaluation.md carries
(a test checks that the docs hold exactly this text)."""

from __future__ import annotations

from .paper_settings import PAPERS, PaperSettings

FIELDS = ("reference_split", "stats_file", "num_samples", "extractor", "resize", "metrics")


def _value(paper: PaperSettings, name: str) -> str:
    """The setting as a reader wants it (``cifar10.train.npz / cifar100.train.npz``, ``50,000``)."""
    if name == "reference_split":
        return f"balanced CIFAR {paper.reference_split} set"
    if name == "stats_file":
        return " / ".join(f"`{f}`" for f in paper.stats_files.values())
    if name == "num_samples":
        return f"{paper.num_samples:,}" + (", equal per class" if paper.balanced_samples else "")
    if name == "extractor":
        return f"{paper.extractor}, {paper.weights}"
    if name == "metrics":
        return ", ".join(paper.metrics)
    return str(getattr(paper, name))


def render_table() -> str:
    """One row per paper and setting: its value and the file:line it was read from."""
    lines = ["| paper | setting | value | source |", "|---|---|---|---|"]
    for paper in PAPERS.values():
        mark = "" if paper.confirmed else " (not from code)"
        for name in FIELDS:
            source = paper.sources[name].replace("|", "/")
            lines.append(f"| `{paper.name}`{mark} | {name.replace('_', ' ')} | {_value(paper, name)} | {source} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m cbdm_core.evaluation.paper_table > table.md
    print(render_table(), end="")
