"""The guidance curve of a comparison (``guidance.curve``): every method evaluated at every w of
the curve with all metrics, the w-curves per value, the Pareto plots of tail memorisation
against tail conditional accuracy and tail coverage, and a secondary comparison at matched tail
accuracy (each method's values interpolated linearly along its curve to the baseline's tail
accuracy at the fixed w).

The primary endpoints stay at the one pre-registered w (``guidance.fixed``) for every method;
everything here is secondary."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..atomic import atomic_path, ensure_dir
from .stats import summarize

if TYPE_CHECKING:
    from .compare_plan import StudyPlan

# The axes of the Pareto plots and the matched comparison.
TAIL_MEMORIZATION = "memorization_pixels_tail"
TAIL_ACCURACY = "accuracy_tail"
TAIL_COVERAGE = "coverage_tail"


def collect_curve(plan: "StudyPlan", label: str) -> dict[float, list[dict[str, Any]]]:
    """``{w: [{"seed", "samples", "values"}]}`` of one method's curve, read from its sample
    folders' ``metrics.json`` (a point without one is left out)."""
    out: dict[float, list[dict[str, Any]]] = {}
    for w in plan.protocol.guidance.curve_values:
        for s in plan.protocol.seeds:
            folder = plan.curve_folder(label, s, w)
            path = folder / "metrics.json"
            if not path.is_file():
                continue
            doc = json.loads(path.read_text())
            out.setdefault(w, []).append({"seed": s, "samples": str(folder), "values": doc.get("values", {})})
    return out


def curve_document(results: dict[str, dict[str, Any]], values: list[str]) -> dict[str, Any]:
    """compare.json's ``guidance_curve``: per method, per w, mean ± sd and per-seed values."""
    doc: dict[str, Any] = {}
    for label, res in results.items():
        points = []
        for w, rows in sorted((res.get("curve") or {}).items()):
            summary = {}
            for v in values:
                s = summarize([r["values"].get(v) for r in rows])
                summary[v] = {"mean": s.mean, "sd": s.sd, "n": s.n,
                              "per_seed": {r["seed"]: r["values"].get(v) for r in rows}}
            points.append({"w": w, "summary": summary})
        doc[label] = points
    return doc


def _series(points: list[dict[str, Any]], value: str) -> list[tuple[float, float]]:
    """``[(w, mean)]`` of one value along a curve (points without a mean left out)."""
    return [(p["w"], p["summary"][value]["mean"]) for p in points
            if value in p["summary"] and p["summary"][value]["mean"] is not None]


def interpolate_at(xs: list[float], ys: list[float], target: float) -> Optional[tuple[float, float]]:
    """``(t, y)`` where the piecewise-linear curve through ``(xs[i], ys[i])`` (in order of w)
    first reaches ``xs = target``: ``t`` is the fractional point index; ``None`` when the curve
    never reaches it (no extrapolation)."""
    for i in range(len(xs) - 1):
        a, b = xs[i], xs[i + 1]
        if min(a, b) <= target <= max(a, b):
            f = 0.0 if a == b else (target - a) / (b - a)
            return i + f, ys[i] + f * (ys[i + 1] - ys[i])
    if xs and xs[-1] == target:
        return float(len(xs) - 1), ys[-1]
    return None


def matched_accuracy(curve: dict[str, list[dict[str, Any]]], baseline: str, fixed_w: Optional[float],
                     values: list[str]) -> Optional[dict[str, Any]]:
    """Each method's ``values`` at the baseline's tail accuracy at the fixed w (means over seeds,
    interpolated linearly along the method's w-curve; also the interpolated w)."""
    base = dict(_series(curve.get(baseline, []), TAIL_ACCURACY))
    if fixed_w is None or fixed_w not in base:
        return None
    target = base[fixed_w]
    methods: dict[str, Any] = {}
    for label, points in curve.items():
        acc = _series(points, TAIL_ACCURACY)
        found = interpolate_at([a for _, a in acc], [w for w, _ in acc], target) if len(acc) > 1 else None
        row: dict[str, Any] = {"w": None if found is None else found[1]}
        for v in values:
            pairs = [(a, y) for (w, a) in acc for (w2, y) in _series(points, v) if w2 == w]
            hit = interpolate_at([a for a, _ in pairs], [y for _, y in pairs], target) if len(pairs) > 1 else None
            row[v] = None if hit is None else hit[1]
        methods[label] = row
    return {"accuracy": TAIL_ACCURACY, "target": target, "from": f"{baseline} at w = {fixed_w:g}",
            "method": "linear interpolation of the means over seeds between adjacent curve points; "
                      "none where a method's curve does not reach the target (no extrapolation)",
            "methods": methods}


def curve_plot_values(curve: dict[str, list[dict[str, Any]]], primary: list[str]) -> list[str]:
    """The values with a w-curve plot: the primary endpoints, tail accuracy/coverage/memorisation, FID."""
    present = {v for points in curve.values() for p in points for v in p["summary"]}
    wanted = list(primary) + [TAIL_ACCURACY, TAIL_COVERAGE, TAIL_MEMORIZATION, "fid"]
    out: list[str] = []
    for v in wanted:
        if v in present and v not in out:
            out.append(v)
    return out


def _name(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", value)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def write_curve_plots(doc: dict[str, Any], folder: Path) -> list[Path]:
    """One PNG per value against w (a line per method, the seeds' range shaded), and the Pareto
    plot (tail memorisation vs tail accuracy and vs tail coverage, one point per w)."""
    from matplotlib.figure import Figure

    curve = doc.get("guidance_curve") or {}
    if not any(curve.values()):
        return []
    ensure_dir(folder, "plot folder")
    written = []
    for value in curve_plot_values(curve, [p["value"] for p in doc.get("primary", [])]):
        fig = Figure(figsize=(6.0, 4.0), dpi=110)
        ax = fig.add_subplot(1, 1, 1)
        for label, points in curve.items():
            rows = [(p["w"], p["summary"][value]) for p in points if value in p["summary"]]
            rows = [(w, s) for w, s in rows if s["mean"] is not None]
            if not rows:
                continue
            known = [[x for x in s["per_seed"].values() if x is not None] for _, s in rows]
            line, = ax.plot([w for w, _ in rows], [s["mean"] for _, s in rows], marker="o", label=label)
            ax.fill_between([w for w, _ in rows], [min(k) for k in known], [max(k) for k in known],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xlabel("guidance w")
        ax.set_ylabel(value)
        ax.set_title(f"{value} against w (mean over seeds, range shaded)", fontsize=9)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # an endpoint without data draws no line
            ax.legend(fontsize=8)
        written.append(_save(fig, folder / f"curve-{_name(value)}.png"))
    pareto = _pareto(curve, Figure)
    if pareto is not None:
        written.append(_save(pareto, folder / "pareto-tail.png"))
    return written


def _pareto(curve: dict[str, list[dict[str, Any]]], figure: Any) -> Optional[Any]:
    """Tail memorisation (y) against tail accuracy and tail coverage (x), each w a labelled point."""
    fig = figure(figsize=(10.0, 4.0), dpi=110)
    drawn = False
    for i, x_value in enumerate((TAIL_ACCURACY, TAIL_COVERAGE)):
        ax = fig.add_subplot(1, 2, i + 1)
        for label, points in curve.items():
            xs = dict(_series(points, x_value))
            ys = dict(_series(points, TAIL_MEMORIZATION))
            ws = [w for w in xs if w in ys]
            if not ws:
                continue
            drawn = True
            ax.plot([xs[w] for w in ws], [ys[w] for w in ws], marker="o", label=label)
            for w in ws:
                ax.annotate(f"w={w:g}", (xs[w], ys[w]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"{x_value} (higher is better)")
        ax.set_ylabel(f"{TAIL_MEMORIZATION} (lower is better)")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # an endpoint without data draws no line
            ax.legend(fontsize=8)
    return fig if drawn else None


def markdown_lines(doc: dict[str, Any]) -> list[str]:
    """compare.md's secondary comparison at matched tail accuracy."""
    m = doc["matched_tail_accuracy"]
    values = [p["value"] for p in doc.get("primary", [])]
    head = ["method", "interpolated w"] + values
    lines = [f"Every method at {m['accuracy']} = {m['target']:.4g} (the baseline, {m['from']}); {m['method']}. "
             "Secondary: the primary endpoints stay at the one pre-registered w.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in m["methods"].items():
        reached = row.get("w") is not None
        # A value missing where the target was reached is not computable there, not "not reached".
        cells = [label] + [f"{row[k]:.4g}" if row.get(k) is not None else ("–" if reached else "not reached")
                           for k in ["w"] + values]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
