"""``compare.md``: the setup of a ``cbdm compare`` study, its statistics notes, the tables of
:mod:`.compare_tables` and the secondary sections (memorisation evidence, matched accuracy)."""

from __future__ import annotations

import json
from typing import Any

from .compare_tables import accuracy_ceiling_table, appendix_table, primary_table
from .sampling_cost import cost_lines
from .study_time import time_lines
from .stats import FEW_SEEDS


def _statistics_notes(doc: dict[str, Any]) -> list[str]:
    p = doc["protocol"]
    n = len(p["seeds"])
    lines = [
        f"- difference = method − baseline, paired by training seed (same seed, same sampling noise); "
        f"`mean paired diff` is the mean over seeds of the per-seed differences",
        f"- 95% t-interval over seeds: mean ± t(0.975, df = n − 1) · sd / √n of the per-seed differences (n = {n})",
        "- rates (memorisation, conditional accuracy): image-level Cochran-Mantel-Haenszel test stratified by "
        "training seed x class (from each sample folder's records.csv; strata without information skipped), "
        f"and a two-stage bootstrap (seeds, then images within seed; {p['bootstrap']} resamples) of the pooled "
        "rate difference (compare.json, appendix)",
        "- Holm correction over the pre-registered primary tests (every primary endpoint x every method "
        "against the baseline; CMH for rates, else the paired t-test over seeds): `p Holm`",
    ]
    tests = doc.get("primary_tests") or []
    known = [t for t in tests if t.get("p") is not None]
    if len(known) < len(tests):  # a test without a p-value is not counted: the family is smaller than planned
        missing = ", ".join(f"{t['value']} ({t['method']})" for t in tests if t.get("p") is None)
        lines.append(f"- **the Holm family has {len(known)} of the {len(tests)} pre-registered tests**: no p-value "
                     f"for {missing} (a value missing in some seed, or no variation), so it is not counted")
    if n < FEW_SEEDS:
        lines.append(f"- **only {n} training seed(s): seed-level intervals are weak** (df = {max(n - 1, 0)}; "
                     f"below {FEW_SEEDS} seeds an interval over seeds is wide or, with one seed, absent); "
                     "the image-level tests count every image but treat the seeds as fixed")
    return lines


def markdown(doc: dict[str, Any]) -> str:
    """``compare.md``: setup, one table per primary endpoint, conditional accuracy against the
    classifier's ceiling, then an appendix of every other value."""
    p = doc["protocol"]
    n_seeds = len(p["seeds"])
    lines = [f"# Comparison: {p['name']}", ""]
    if p.get("description"):
        lines += [p["description"].strip(), ""]
    data = p["data"]
    report = doc.get("sampling_seeds", {}).get("report", {})
    lines += [
        f"- data: {data['dataset']}" + (f", imbalance {data['imb_factor']}" if data.get("imb_factor") else ""),
        f"- training seeds: {', '.join(map(str, p['seeds']))} (mean ± sd over {n_seeds} seed(s))",
        f"- sampling: {p['sampling']['sampler']}, {p['sampling']['steps'] or 'default'} steps, "
        f"{p['sampling']['num']} images ({p['sampling']['classes']}); each training seed has its own sampling "
        f"seed, derived from report_seed {doc['report_seed']}: "
        + ", ".join(f"{t} -> {s}" for t, s in report.items()),
    ]
    g = p["guidance"]
    if g.get("grid") is not None:
        lines.append(f"- w chosen per method from {g['grid']} by {g['select']} on selection samples (sampling "
                     f"seeds derived from {g['selection_seed']}, never a report seed): "
                     + ", ".join(f"{m} w={r['guidance']['chosen']:g}" for m, r in doc["methods"].items()))
    else:
        lines.append(f"- guidance: one pre-registered w = {g['fixed']:g} for every method (primary endpoints)"
                     + (f"; w-curve over {', '.join(f'{w:g}' for w in g['curve'])} (secondary)" if g.get("curve") else ""))
    lines.append(f"- baseline: {doc['baseline']}")
    for label, m in doc["methods"].items():  # sampling arms: same weights, other sampling
        if m.get("sampling_arm"):
            arm = m["sampling_arm"]
            lines.append(f"- {label}: samples {arm['sample_from']}'s runs with {json.dumps(arm['sampling'])}")
    if doc.get("extractor"):
        lines.append(f"- features: {doc['extractor'].get('name')} ({doc['extractor'].get('cache_key')})")
    if doc.get("group_rule"):
        lines.append(f"- groups: {doc['group_rule']}")
    lines += ["", "## Statistics", ""] + _statistics_notes(doc)
    rows = doc["values"]
    for row in [r for r in rows if r["primary"]]:
        lines += ["", f"## Primary endpoint: {row['value']} ({row['direction']} is better)", ""]
        lines += primary_table(doc, row["value"])
    lines += _secondary(doc)
    lines += ["", "## Sampling cost (report sets: sampling and writing, not evaluation)", ""]
    lines += cost_lines(doc["methods"])
    if doc.get("study_time"):
        lines += ["", "## Wall time: training vs sampling and evaluation", ""] + time_lines(doc["study_time"])
    ceiling = accuracy_ceiling_table(doc)
    if ceiling:
        lines += ["", "## Conditional accuracy next to the classifier's ceiling", ""] + ceiling
    rest = [r for r in rows if not r["primary"]]
    if rest:
        order = {None: 0, "head": 1, "medium": 2, "tail": 3}
        rest = sorted(rest, key=lambda r: (order[r["group"]], rows.index(r)))
        lines += ["", "## Appendix: every other value (all samples, then head / medium / tail)", ""]
        lines += appendix_table(doc, rest)
    return "\n".join(lines) + "\n"


def _secondary(doc: dict[str, Any]) -> list[str]:
    """The memorisation evidence and, with a curve, the comparison at matched tail accuracy."""
    from .curves import markdown_lines as curve_lines
    from .memorization_evidence import markdown_lines as memo_lines

    lines: list[str] = []
    if doc.get("memorization_evidence"):
        lines += ["", "## Memorisation: what the rates mean", ""] + memo_lines(doc["memorization_evidence"])
    if doc.get("matched_tail_accuracy"):
        lines += ["", "## Secondary: at matched tail accuracy (w-curve)", ""] + curve_lines(doc)
    return lines
