"""Reports of an evaluation: a rich table, ``metrics.json`` and the per-class FID plot."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from rich import box
from rich.table import Table
from rich.text import Text

from ..atomic import atomic_path, atomic_write_text
from .engine import EvalResult
from .values import is_per_class

FORMAT = "cbdm-eval/1"
METRICS_JSON = "metrics.json"
RECORDS_CSV = "records.csv"
RECORD_COLUMNS: tuple[str, ...] = (
    "index", "requested_class", "predicted_class", "confidence",
    "d1_pixels", "d2_pixels", "nn_train_index_pixels", "memorized_pixels",
    "d1_features", "d2_features", "nn_train_index_features", "memorized_features",
)
PER_CLASS_PLOT = "per_class_fid.png"
NOT_COMPUTED = "not computed"
GROUP_COLORS = {"head": "tab:blue", "medium": "tab:orange", "tail": "tab:red"}


def _fmt(value: Optional[float]) -> str:
    return NOT_COMPUTED if value is None else f"{value:.5g}"


GROUP_SUFFIXES: tuple[tuple[str, str], ...] = (("_class_mean", "class mean"), ("_head", "head"),
                                               ("_medium", "medium"), ("_tail", "tail"))
STD_SUFFIX = "_std"


def _short(value: Optional[float], digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _direction(key: str, metric: str, result: EvalResult):
    """The declared direction of ``key``, ``None`` when its metric does not declare it (or the
    result carries no spec of it)."""
    spec = result.metric_specs.get(metric)
    return None if spec is None else spec.direction(key)


def metrics_table(result: EvalResult) -> Table:
    """The summary at 80 columns: one row per quantity (``is`` with its spread), its value over
    all samples and, for per-class quantities, the class mean and the head / medium / tail
    averages. The extractor is named once, in the title; sample counts (``pr_n``, ...) and the
    values of single classes are left to ``metrics.json`` and the plot."""
    from ..interfaces import Direction

    title = f"{result.dataset}: {result.samples['count']} samples vs {result.reference['count']} real\n" \
            f"features: {result.extractor.label}"
    rows: dict[str, dict[str, Text]] = {}
    for m in result.metrics:
        if m.skipped is not None or not m.values:
            rows.setdefault(m.metric, {})["value"] = Text(NOT_COMPUTED, style="bold red")
            continue
        for key, value in m.values.items():
            if is_per_class(key):
                continue
            cell = Text(_short(value), style="bold red" if value is None else "")
            column, base = "value", key
            for suffix, name in GROUP_SUFFIXES:
                if key.endswith(suffix):
                    column, base = name, key[:-len(suffix)]
                    break
            if column == "value" and _direction(key, m.metric, result) is Direction.NEITHER:
                if key.endswith(STD_SUFFIX) and key[:-len(STD_SUFFIX)] in rows and value is not None:
                    rows[key[:-len(STD_SUFFIX)]]["value"].append(f"±{_short(value, 2)}")
                continue  # a sample count: metrics.json has it
            rows.setdefault(base, {})[column] = cell
    columns = ["value"] + [name for _, name in GROUP_SUFFIXES if any(name in r for r in rows.values())]
    # pad_edge=False: the two edge spaces are what pushed the tail column past 80 characters.
    table = Table(title=Text(title), title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False,
                  caption="per-class values: metrics.json" if len(columns) > 1 else None, caption_justify="left")
    table.add_column("metric", no_wrap=True)
    for name in columns:
        table.add_column(name, justify="right", no_wrap=True)
    for base, cells in rows.items():
        table.add_row(Text(base), *[cells.get(name, Text("")) for name in columns])
    return table


def groups_of(result: EvalResult) -> Optional[dict[str, list[int]]]:
    """Head / medium / tail classes by training frequency (``None`` without counts or < 3 classes);
    the rule is :func:`cbdm_core.metrics.frequency_groups`, the same for every report and plot."""
    from ..metrics import frequency_groups

    if result.class_counts is None or len(result.class_counts) < 3:
        return None
    return frequency_groups(result.class_counts)


def _group_values(values: dict[str, Optional[float]], group: str) -> dict[str, Optional[float]]:
    """``{"fid": ..., "kid": ...}`` from the ``<name>_<group>`` values."""
    suffix = f"_{group}"
    return {k[:-len(suffix)]: v for k, v in values.items() if k.endswith(suffix)}


def result_to_dict(result: EvalResult) -> dict[str, Any]:
    """The JSON document of ``metrics.json``."""
    ext = result.extractor
    per_class = result.per_class_fid()
    groups = groups_of(result)
    values = result.values()
    doc: dict[str, Any] = {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": result.dataset,
        "extractor": {"name": ext.name, "cache_key": ext.cache_key, "file": ext.file,
                      "comparable_to_published": ext.comparable, "note": ext.note},
        "comparable_to_published": ext.comparable,
        "samples": result.samples,
        "reference": result.reference,
        "values": values,
        "metrics": {m.metric: {"extractor": ext.name, "cache_key": ext.cache_key, "computed": m.computed,
                               "values": m.values, "not_computed_reason": m.skipped or (
                                   None if m.computed else "; ".join(m.warnings) or "no value"),
                               "warnings": m.warnings}
                    for m in result.metrics},
        "not_computed": [k for k, v in values.items() if v is None] +
                        [m.metric for m in result.metrics if m.skipped is not None],
        "class_counts": {"values": result.class_counts, "source": result.class_counts_source},
        "training_set": result.training,
        "per_class": None,
        "groups": None,
        "warnings": result.warnings,
    }
    if not ext.comparable:
        doc["not_comparable_reason"] = ext.note
    if result.paper is not None:
        doc["paper"] = result.paper
    if per_class is not None or result.per_class_values():
        group_of = {c: g for g, cs in (groups or {}).items() for c in cs}
        table = result.per_class_values()
        doc["per_class"] = [
            {"class": c, "name": result.class_names[c] if c < len(result.class_names) else str(c),
             "train_count": None if result.class_counts is None else result.class_counts[c],
             "samples": None if result.sample_counts is None else result.sample_counts[c],
             "group": group_of.get(c), "fid": (per_class or {}).get(c), **table.get(c, {}), "extractor": ext.name}
            for c in sorted(table)]
    if groups is not None:
        from ..metrics import describe_rule

        doc["group_rule"] = describe_rule(result.class_counts)
        doc["groups"] = {g: {"classes": cs, "fid": values.get(f"fid_{g}"), **_group_values(values, g),
                             "extractor": ext.name} for g, cs in groups.items()}
    return doc


def write_metrics_json(result: EvalResult, path: Path) -> Path:
    """Write ``records.csv`` (one row per sample, :func:`write_records_csv`), then ``metrics.json``
    next to it, each atomically (non-finite numbers are already ``None``): ``metrics.json`` marks a
    finished evaluation, so a kill between the two writes never leaves metrics without records."""
    write_records_csv(result, Path(path).parent / RECORDS_CSV)
    atomic_write_text(Path(path), json.dumps(result_to_dict(result), indent=2, allow_nan=False) + "\n")
    return Path(path)


def records_table(result: EvalResult) -> list[dict[str, Any]]:
    """One row per generated image, :data:`RECORD_COLUMNS`: the requested class and the
    per-sample values the metrics computed (classifier prediction, memorisation distances,
    nearest training image and flag). A column a run did not compute is ``None``."""
    columns: dict[str, Any] = {}
    for m in result.metrics:
        columns.update(m.per_sample)
    n = int(result.samples["count"])
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"index": i,
                               "requested_class": None if result.sample_labels is None else result.sample_labels[i]}
        for name in RECORD_COLUMNS[2:]:
            col = columns.get(name)
            row[name] = None if col is None else _plain(col[i])
        rows.append(row)
    return rows


def _plain(x: Any) -> Any:
    """A numpy/torch scalar as a Python int or float (CSV writes it exactly: repr round-trips)."""
    value = x.item() if hasattr(x, "item") else x
    return value


def write_records_csv(result: EvalResult, path: Path) -> Path:
    """``records.csv``, atomically: :func:`records_table`, empty cells where not computed."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(RECORD_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in records_table(result):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    atomic_write_text(Path(path), buf.getvalue())
    return Path(path)


def read_records_csv(path: Path) -> dict[str, list[Optional[float]]]:
    """``records.csv`` as columns (numbers, ``None`` for empty cells)."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {name: [None if r.get(name) in (None, "") else float(r[name]) for r in rows] for name in RECORD_COLUMNS}


def _plain_log_ticks(ax: Any, xs: list[int]) -> None:
    """Counts as plain numbers (140, 200, 500), not 1.4x10^2; fewer minor labels on wide ranges."""
    import math

    from matplotlib.ticker import FuncFormatter

    decades = math.log10(max(xs) / min(xs)) if xs else 0.0

    def minor(x: float, _pos: int) -> str:
        lead = int(round(x / 10 ** math.floor(math.log10(x)))) if x > 0 else 0
        return f"{x:g}" if decades < 1 or (decades < 2.5 and lead in (2, 5)) else ""

    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(minor))


def plot_per_class_fid(result: EvalResult, path: Path) -> Optional[Path]:
    """Per-class FID against the class's training frequency (log x), coloured by group, with the
    head / medium / tail averages as horizontal lines. ``None`` (nothing written) without values."""
    from matplotlib.figure import Figure  # the figure renders with Agg; no pyplot, no global backend

    per_class = result.per_class_fid()
    if per_class is None or result.class_counts is None:
        return None
    points = [(c, v) for c, v in sorted(per_class.items()) if v is not None]
    if not points:
        return None
    groups = groups_of(result) or {"all": list(range(len(result.class_counts)))}
    group_of = {c: g for g, cs in groups.items() for c in cs}
    counts = result.class_counts
    fig = Figure(figsize=(7, 4.5), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    for g in groups:
        xs = [max(counts[c], 1) for c, _ in points if group_of.get(c) == g]
        ys = [v for c, v in points if group_of.get(c) == g]
        if xs:
            color = GROUP_COLORS.get(g, "tab:gray")
            ax.scatter(xs, ys, s=28, color=color, alpha=0.85, label=f"{g} classes")
            mean = sum(ys) / len(ys)
            ax.axhline(mean, color=color, linestyle="--", linewidth=1.2, label=f"{g} mean {mean:.3g}")
    ax.set_xscale("log")
    _plain_log_ticks(ax, [max(counts[c], 1) for c, _ in points])
    # The source (often a long checkpoint path) is in metrics.json; the axis keeps a short label.
    ax.set_xlabel("training images per class")
    ax.set_ylabel("per-class FID")
    title = f"{result.dataset}: per-class FID, {result.extractor.label} features"
    if not result.extractor.comparable:
        title += "\n(not comparable to published FID)"
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
