"""The per-class plots of ``cbdm compare``: each per-class value against the class's training
count, one line per method."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..atomic import atomic_path, ensure_dir

# per_class entries of metrics.json that are not metric values
_NOT_VALUES = {"class", "name", "train_count", "samples", "group", "extractor"}


def per_class_series(doc: dict[str, Any]) -> dict[str, dict[str, dict[int, list[float]]]]:
    """``{value: {method: {class: [per-seed values]}}}`` from the per-class report entries."""
    out: dict[str, dict[str, dict[int, list[float]]]] = {}
    for label, m in doc["methods"].items():
        for run in m["runs"]:
            for row in run["report"].get("per_class") or []:
                for key, v in row.items():
                    if key in _NOT_VALUES or not isinstance(v, (int, float)) or v is None:
                        continue
                    out.setdefault(key, {}).setdefault(label, {}).setdefault(int(row["class"]), []).append(float(v))
    return out


def write_plots(doc: dict[str, Any], folder: Path) -> list[Path]:
    """One PNG per per-class value: mean over seeds against the class's training count (log x),
    one line per method, with the seeds' range shaded."""
    from matplotlib.figure import Figure

    counts = doc.get("class_counts")
    series = per_class_series(doc)
    if not counts or not series:
        return []
    ensure_dir(folder, "plot folder")
    written = []
    for value, methods in series.items():
        fig = Figure(figsize=(6.5, 4.2), dpi=110)
        ax = fig.add_subplot(1, 1, 1)
        for label, per_class in methods.items():
            classes = sorted((c for c in per_class if c < len(counts)), key=lambda c: counts[c])
            xs = [max(counts[c], 1) for c in classes]
            means = [sum(per_class[c]) / len(per_class[c]) for c in classes]
            line, = ax.plot(xs, means, marker="o", markersize=3, linewidth=1.4, label=label)
            ax.fill_between(xs, [min(per_class[c]) for c in classes], [max(per_class[c]) for c in classes],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        ax.set_xlabel("training images of the class")
        ax.set_ylabel(value)
        ax.set_title(f"{doc['protocol']['name']}: per-class {value} (mean over seeds, range shaded)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # an endpoint without data draws no line
            ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        path = folder / f"per-class-{re.sub(r'[^A-Za-z0-9_.-]', '_', value)}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        written.append(path)
    return written
