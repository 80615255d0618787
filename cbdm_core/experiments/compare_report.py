"""The outputs of ``cbdm compare``: ``compare.json`` (every number), ``compare.md`` (mean ± sd
over seeds, paired difference to the baseline with a bootstrap interval, per group, the primary
endpoints first) and per-class plots against training frequency (one line per method)."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..atomic import atomic_path, atomic_write_text, ensure_dir
from .protocol import protocol_dict
from .stats import paired_bootstrap, summarize

if TYPE_CHECKING:
    from .compare import StudyPlan

FORMAT = "cbdm-compare/1"
COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"
PLOTS = "plots"
GROUP_SUFFIXES = ("_head", "_medium", "_tail")
# per_class entries of metrics.json that are not metric values
_NOT_VALUES = {"class", "name", "train_count", "samples", "group", "extractor"}


def _group_of(value: str) -> Optional[str]:
    for suffix in GROUP_SUFFIXES:
        if value.endswith(suffix):
            return suffix[1:]
    return None


def reported_values(plan: "StudyPlan", docs: list[dict[str, Any]]) -> list[str]:
    """The scores to report: primary endpoints first (in protocol order), then every declared,
    rankable, non-per-class value the report metrics returned."""
    from ..evaluation.values import summary_values

    names: list[str] = []
    for d in docs:
        names.extend(k for k in d.get("values", {}) if k not in names)
    rest = [v for v in summary_values(names, plan.eval_metrics) if v not in plan.protocol.primary]
    return list(plan.protocol.primary) + rest


def build_document(plan: "StudyPlan", results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ``compare.json`` document from the finished study."""
    from ..evaluation.values import direction_of

    p = plan.protocol
    base = p.baseline_label
    docs = [r["doc"] for res in results.values() for r in res["reports"]]
    values = reported_values(plan, docs)
    directions = {v: direction_of(v, plan.eval_metrics).value for v in values}
    base_by_seed = {r["seed"]: r["doc"].get("values", {}) for r in results[base]["reports"]}
    methods: dict[str, Any] = {}
    for label, res in results.items():
        entry = res["entry"]
        by_seed = {r["seed"]: r["doc"].get("values", {}) for r in res["reports"]}
        summary = {v: vars(summarize([by_seed[s].get(v) for s in p.seeds])) for v in values}
        difference = None
        if label != base:
            difference = {v: vars(paired_bootstrap([by_seed[s].get(v) for s in p.seeds],
                                                   [base_by_seed[s].get(v) for s in p.seeds],
                                                   resamples=p.bootstrap, seed=0)) for v in values}
        methods[label] = {
            "method": entry.method, "options": entry.options,
            "guidance": {"chosen": res["chosen"], "select": p.guidance.select,
                         "selection_seed": p.guidance.selection_seed if p.selecting() else None,
                         "points": [{"w": w, "mean": _mean(vs), "per_seed": dict(zip(p.seeds, vs))}
                                    for w, vs in res["points"].items()]},
            "runs": [{"seed": r["seed"], "run": r["run"], "selection": r["selection"],
                      "report": {"samples": r["samples"], "sampling_seed": r["sampling_seed"],
                                 "guidance": r["guidance"], "values": r["doc"].get("values", {}),
                                 "per_class": r["doc"].get("per_class"), "groups": r["doc"].get("groups")}}
                     for r in res["reports"]],
            "summary": summary,
            "difference_to_baseline": difference,
        }
    first = docs[0] if docs else {}
    return {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "protocol": protocol_dict(p),
        "baseline": base,
        "primary": [{"value": v, "direction": directions.get(v)} for v in p.primary],
        "values": [{"value": v, "direction": directions[v], "primary": v in p.primary, "group": _group_of(v)}
                   for v in values],
        "report_seed": p.report_seed,
        "selection_seed": p.guidance.selection_seed if p.selecting() else None,
        "extractor": first.get("extractor"),
        "class_counts": (first.get("class_counts") or {}).get("values"),
        "group_rule": first.get("group_rule"),
        "groups": {g: v.get("classes") for g, v in (first.get("groups") or {}).items()},
        "methods": methods,
    }


def _mean(values: list[Optional[float]]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _fmt(x: Optional[float]) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _cell(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "–"
    return _fmt(s["mean"]) + ("" if s["sd"] is None else f" ± {_fmt(s['sd'])}")


def _diff_cell(d: dict[str, Any]) -> str:
    if d["mean"] is None:
        return "–"
    return f"{d['mean']:+.4g} [{_fmt(d['low'])}, {_fmt(d['high'])}]"


def _table(doc: dict[str, Any], rows: list[dict[str, Any]], with_group: bool) -> list[str]:
    labels = list(doc["methods"])
    base = doc["baseline"]
    others = [m for m in labels if m != base]
    head = ["value"] + (["group"] if with_group else []) + ["better"] + labels + [f"{m} − {base} [95% CI]" for m in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        v = row["value"]
        name = f"**{v}** ★" if row["primary"] else v
        cells = [name] + ([row["group"] or ""] if with_group else []) + [row["direction"]]
        cells += [_cell(doc["methods"][m]["summary"][v]) for m in labels]
        cells += [_diff_cell(doc["methods"][m]["difference_to_baseline"][v]) for m in others]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(doc: dict[str, Any]) -> str:
    """``compare.md``: the primary endpoints, then every value overall, then per group."""
    p = doc["protocol"]
    n_seeds = len(p["seeds"])
    lines = [f"# Comparison: {p['name']}", ""]
    if p.get("description"):
        lines += [p["description"].strip(), ""]
    data = p["data"]
    lines += [
        f"- data: {data['dataset']}" + (f", imbalance {data['imb_factor']}" if data.get("imb_factor") else ""),
        f"- training seeds: {', '.join(map(str, p['seeds']))} (mean ± sd over {n_seeds} seed(s))",
        f"- sampling: {p['sampling']['sampler']}, {p['sampling']['steps'] or 'default'} steps, "
        f"{p['sampling']['num']} images ({p['sampling']['classes']}), report seed {doc['report_seed']}",
    ]
    g = p["guidance"]
    if g.get("grid") is not None:
        lines.append(f"- w chosen per method from {g['grid']} by {g['select']} on sampling seed "
                     f"{g['selection_seed']} (never the report seed): "
                     + ", ".join(f"{m} w={r['guidance']['chosen']:g}" for m, r in doc["methods"].items()))
    else:
        lines.append(f"- fixed guidance w = {g['fixed']:g}")
    lines.append(f"- baseline: {doc['baseline']}; difference = method − baseline, paired by training seed, "
                 f"95% percentile bootstrap over seeds ({p['bootstrap']} resamples)")
    if doc.get("extractor"):
        lines.append(f"- features: {doc['extractor'].get('name')} ({doc['extractor'].get('cache_key')})")
    if doc.get("group_rule"):
        lines.append(f"- groups: {doc['group_rule']}")
    if n_seeds < 2:
        lines.append("- one seed: no sd, and the interval is the single difference (no uncertainty estimate)")
    rows = doc["values"]
    primary = [r for r in rows if r["primary"]]
    overall = [r for r in rows if not r["primary"] and r["group"] is None]
    grouped = [r for r in rows if not r["primary"] and r["group"] is not None]
    if primary:
        lines += ["", "## Primary endpoints (pre-registered, ★)", ""] + _table(doc, primary, True)
    if overall:
        lines += ["", "## All samples", ""] + _table(doc, overall, False)
    if grouped:
        order = {"head": 0, "medium": 1, "tail": 2}
        grouped = sorted(grouped, key=lambda r: (order[r["group"]], rows.index(r)))
        lines += ["", "## By group (head / medium / tail)", ""] + _table(doc, grouped, True)
    return "\n".join(lines) + "\n"


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
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        path = folder / f"per-class-{re.sub(r'[^A-Za-z0-9_.-]', '_', value)}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        written.append(path)
    return written


def write_outputs(plan: "StudyPlan", results: dict[str, dict[str, Any]], out_dir: Path) -> dict[str, Any]:
    """Write compare.json, compare.md and the plots; return the document."""
    doc = build_document(plan, results)
    plots = write_plots(doc, out_dir / PLOTS)
    doc["plots"] = [str(p) for p in plots]
    atomic_write_text(out_dir / COMPARE_JSON, json.dumps(doc, indent=2, allow_nan=False, default=str) + "\n")
    atomic_write_text(out_dir / COMPARE_MD, markdown(doc))
    return doc
