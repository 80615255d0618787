"""The outputs of ``cbdm compare``: ``compare.json`` (every number), ``compare.md`` (one table
per primary endpoint with the methods as rows and every seed's value, then an appendix of every
other value) and per-class plots against training frequency (one line per method).

Statistics (:mod:`.stats`): per-seed values, mean ± sd, paired differences to the baseline with
a t-interval over seeds and a paired t-test; for rates, the image-level CMH test stratified by
seed x class and a two-stage bootstrap, both from the sample folders' ``records.csv``; Holm's
correction over the primary tests (primary endpoints x methods). Plots: :mod:`.compare_plots`,
:mod:`.curves`, :mod:`.memorization_evidence`."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from ..atomic import atomic_write_text
from .arms import arm_summary
from .protocol import protocol_dict
from .sampling_cost import cost_lines, cost_summary
from .stats import FEW_SEEDS, cmh_test, holm, paired_difference, summarize, two_stage_bootstrap

if TYPE_CHECKING:
    from .compare_plan import StudyPlan

FORMAT = "cbdm-compare/2"
COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"
PLOTS = "plots"
GROUP_SUFFIXES = ("_head", "_medium", "_tail")
# Rates over images whose per-image outcome records.csv holds: value stem -> outcome of a row.
_RATES: dict[str, Callable[[dict[str, list], int], Optional[float]]] = {
    "memorization_pixels": lambda r, i: r["memorized_pixels"][i],
    "memorization_features": lambda r, i: r["memorized_features"][i],
    "accuracy": lambda r, i: (None if r["predicted_class"][i] is None or r["requested_class"][i] is None
                              else float(r["predicted_class"][i] == r["requested_class"][i])),
}


def _group_of(value: str) -> Optional[str]:
    for suffix in GROUP_SUFFIXES:
        if value.endswith(suffix):
            return suffix[1:]
    return None


def rate_of(value: str) -> Optional[tuple[str, Optional[str]]]:
    """``(stem, group)`` when ``value`` is a rate over images that records.csv can recount
    (``memorization_pixels_tail`` -> ``("memorization_pixels", "tail")``), else ``None``."""
    group = _group_of(value)
    stem = value[: -len(group) - 1] if group else value
    return (stem, group) if stem in _RATES else None


def reported_values(plan: "StudyPlan", docs: list[dict[str, Any]]) -> list[str]:
    """The scores to report: primary endpoints first (in protocol order), then every declared,
    rankable, non-per-class value the report metrics returned."""
    from ..evaluation.values import summary_values

    names: list[str] = []
    for d in docs:
        names.extend(k for k in d.get("values", {}) if k not in names)
    rest = [v for v in summary_values(names, plan.evaluation.metrics) if v not in plan.protocol.primary]
    return list(plan.protocol.primary) + rest


def _records(folder: str) -> Optional[dict[str, list]]:
    """A sample folder's ``records.csv`` as columns, ``None`` when missing (an older study)."""
    from ..evaluation import RECORDS_CSV, read_records_csv

    path = Path(folder) / RECORDS_CSV
    return read_records_csv(path) if path.is_file() else None


def _outcomes(records: Optional[dict[str, list]], stem: str, classes: Optional[list[int]]) -> dict[int, np.ndarray]:
    """``{class: per-image 0/1 outcomes}`` of the rate ``stem`` (within ``classes``; all when None)."""
    if records is None:
        return {}
    out: dict[int, list[float]] = {}
    for i, req in enumerate(records["requested_class"]):
        y = _RATES[stem](records, i)
        if req is None or y is None or (classes is not None and int(req) not in classes):
            continue
        out.setdefault(int(req), []).append(float(y))
    return {c: np.asarray(v) for c, v in out.items()}


def image_level(stem: str, classes: Optional[list[int]], method: list[Optional[dict]],
                baseline: list[Optional[dict]], *, resamples: int) -> dict[str, Any]:
    """The image-level evidence on one rate: per seed x class 2x2 tables -> CMH p-value, and the
    two-stage bootstrap interval of the pooled rate difference. ``method[i]``/``baseline[i]``
    are the records of training seed ``i``; a seed without records on either side is left out."""
    tables, m_pooled, b_pooled = [], [], []
    for rec_m, rec_b in zip(method, baseline):
        om, ob = _outcomes(rec_m, stem, classes), _outcomes(rec_b, stem, classes)
        if not om or not ob:
            continue
        for c in sorted(set(om) | set(ob)):
            a, b = om.get(c, np.empty(0)), ob.get(c, np.empty(0))
            tables.append([[a.sum(), a.size - a.sum()], [b.sum(), b.size - b.sum()]])
        m_pooled.append(np.concatenate(list(om.values())))
        b_pooled.append(np.concatenate(list(ob.values())))
    if not tables:
        return {"p_image": None}
    test = cmh_test(tables)
    low, high = two_stage_bootstrap(m_pooled, b_pooled, resamples=resamples, seed=0)
    events = [int(sum(t[0][0] for t in tables)), int(sum(t[1][0] for t in tables))]
    images = [int(sum(t[0][0] + t[0][1] for t in tables)), int(sum(t[1][0] + t[1][1] for t in tables))]
    return {"p_image": test.p, "cmh_statistic": test.statistic, "cmh_strata": test.strata,
            "odds_ratio_mh": test.odds_ratio, "events": events, "images": images,
            "bootstrap_2stage": [low, high]}


def _difference(p: Any, value: str, seeds: list[int], by_seed: dict, base_by_seed: dict, records: dict,
                groups: dict[str, list[int]]) -> dict[str, Any]:
    """Everything compare.json holds on ``method - baseline`` for one value."""
    d = paired_difference([by_seed[s].get(value) for s in seeds], [base_by_seed[s].get(value) for s in seeds])
    out: dict[str, Any] = {"per_seed": dict(zip(seeds, d.per_seed)), "diff_mean": d.mean,
                           "t_interval": [d.low, d.high], "p_seed": d.p, "n": d.n}
    rate = rate_of(value)
    if rate is not None:
        stem, group = rate
        classes = None if group is None else groups.get(group)
        if group is None or classes is not None:
            out.update(image_level(stem, classes, [records["method"].get(s) for s in seeds],
                                   [records["base"].get(s) for s in seeds], resamples=p.bootstrap))
    return out


def build_document(plan: "StudyPlan", results: dict[str, dict[str, Any]],
                   classifier: Optional[dict[str, Any]] = None,
                   heldout: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The ``compare.json`` document from the finished study (``classifier``: the auto
    classifier's description and held-out accuracy, when one was trained; ``heldout``: the
    held-out-real memorisation document of :mod:`.heldout`)."""
    from ..evaluation.values import direction_of
    from .curves import curve_document, matched_accuracy
    from .memorization_evidence import evidence
    from .provenance import code_version

    p = plan.protocol
    base = p.baseline_label
    docs = [r["doc"] for res in results.values() for r in res["reports"]]
    first = docs[0] if docs else {}
    groups = {g: v.get("classes") for g, v in (first.get("groups") or {}).items()}
    values = reported_values(plan, docs)
    directions = {v: direction_of(v, plan.evaluation.metrics).value for v in values}
    base_by_seed = {r["seed"]: r["doc"].get("values", {}) for r in results[base]["reports"]}
    base_records = {r["seed"]: _records(r["samples"]) for r in results[base]["reports"]}
    methods: dict[str, Any] = {}
    for label, res in results.items():
        entry = res["entry"]
        by_seed = {r["seed"]: r["doc"].get("values", {}) for r in res["reports"]}
        summary = {v: {**vars(summarize([by_seed[s].get(v) for s in p.seeds])),
                       "per_seed": {s: by_seed[s].get(v) for s in p.seeds}} for v in values}
        difference = None
        if label != base:
            records = {"method": {r["seed"]: _records(r["samples"]) for r in res["reports"]}, "base": base_records}
            difference = {v: _difference(p, v, p.seeds, by_seed, base_by_seed, records, groups) for v in values}
        methods[label] = _method_entry(plan, entry, res, summary, difference)
    curve = curve_document(results, values)
    fixed = p.guidance.fixed if not p.selecting() else None
    return {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "protocol": protocol_dict(p),
        "baseline": base,
        "primary": [{"value": v, "direction": directions.get(v)} for v in p.primary],
        "primary_tests": _primary_tests(p.primary, methods, base),
        "values": [{"value": v, "direction": directions[v], "primary": v in p.primary, "group": _group_of(v)}
                   for v in values],
        "report_seed": p.report_seed,
        "selection_seed": p.guidance.selection_seed if p.selecting() else None,
        "sampling_seeds": plan.seeds,
        "extractor": first.get("extractor"),
        "classifier": classifier,
        "class_counts": (first.get("class_counts") or {}).get("values"),
        "group_rule": first.get("group_rule"),
        "groups": groups,
        "methods": methods,
        "guidance_curve": curve if p.guidance.curve else None,
        "matched_tail_accuracy": matched_accuracy(curve, base, fixed, list(p.primary)) if p.guidance.curve else None,
        "memorization_evidence": evidence(results, _records, heldout, {g: c or [] for g, c in groups.items()}),
    }


def _method_entry(plan: "StudyPlan", entry: Any, res: dict[str, Any], summary: dict[str, Any],
                  difference: Optional[dict[str, Any]]) -> dict[str, Any]:
    """One method's part of compare.json."""
    p = plan.protocol
    return {
        "method": entry.method, "options": entry.options,
        "sampling_arm": arm_summary(entry), "sampling_cost": cost_summary(res["reports"]),
        "guidance": {"chosen": res["chosen"], "select": p.guidance.select,
                     "selection_seeds": plan.seeds.get("select") or None,
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


def _primary_tests(primary: list[str], methods: dict[str, Any], base: str) -> list[dict[str, Any]]:
    """One test per primary endpoint and method (against the baseline): the image-level CMH
    p-value for a rate, else the paired t-test over seeds; Holm-adjusted over all of them.
    The adjusted value is also written into the method's difference entry (``p_holm``)."""
    tests = []
    for v in primary:
        for label, m in methods.items():
            if label == base:
                continue
            d = m["difference_to_baseline"][v]
            image = d.get("p_image") is not None
            tests.append({"value": v, "method": label, "test": "CMH (images, seed x class)" if image
                          else "paired t (seeds)", "p": d["p_image"] if image else d["p_seed"]})
    for t, adjusted in zip(tests, holm([t["p"] for t in tests])):
        t["p_holm"] = adjusted
        methods[t["method"]]["difference_to_baseline"][t["value"]]["p_holm"] = adjusted
    return tests


def _mean(values: list[Optional[float]]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _fmt(x: Optional[float]) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _signed(x: Optional[float]) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:+.4g}"


def _p(x: Optional[float]) -> str:
    if x is None:
        return "–"
    return "<0.0001" if x < 1e-4 else f"{x:.4f}"


def _mean_sd(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "–"
    return _fmt(s["mean"]) + ("" if s["sd"] is None else f" ± {_fmt(s['sd'])}")


def _interval(pair: Optional[list]) -> str:
    if not pair or pair[0] is None:
        return "–"
    return f"[{_signed(pair[0])}, {_signed(pair[1])}]"


def _seed_values(s: dict[str, Any]) -> str:
    return " / ".join(_fmt(x) for x in s["per_seed"].values())


def _primary_table(doc: dict[str, Any], value: str) -> list[str]:
    """Methods as rows: w, each seed's value, mean ± sd, the paired difference to the baseline
    with its t-interval, the image-level p-value and the Holm-adjusted one."""
    base = doc["baseline"]
    seeds = doc["protocol"]["seeds"]
    accuracy = _accuracy_beside(doc, value)
    head = (["method", "w"] + [f"seed {s}" for s in seeds] + ["mean ± sd", f"mean paired diff vs {base}",
            "95% t-interval (seeds)", "p image (CMH)", "p Holm"] + ([accuracy] if accuracy else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, m in doc["methods"].items():
        s = m["summary"][value]
        d = m["difference_to_baseline"][value] if m["difference_to_baseline"] else None
        cells = [label + (" (baseline)" if label == base else ""), _fmt(m["guidance"]["chosen"])]
        cells += [_fmt(s["per_seed"].get(x, s["per_seed"].get(str(x)))) for x in seeds] + [_mean_sd(s)]
        if d is None:
            cells += ["", "", "", ""]
        else:
            cells += [_signed(d["diff_mean"]), _interval(d["t_interval"]), _p(d.get("p_image")), _p(d.get("p_holm"))]
        if accuracy:
            cells.append(_accuracy_cell(m, accuracy, doc["methods"][base]))
        lines.append("| " + " | ".join(cells) + " |")
    if accuracy:
        lines += ["", f"`{accuracy}`: the share of this group's samples the feature classifier assigns to the "
                  "requested class (mean over seeds; in brackets the difference to the baseline). A method "
                  "whose samples leave their class can copy less or cover more for that reason alone: read "
                  "each difference above against this column and the protocol's pre-registered guard."]
    return lines


def _accuracy_beside(doc: dict[str, Any], value: str) -> Optional[str]:
    """The conditional-accuracy value of ``value``'s group (``accuracy_tail`` beside a tail
    endpoint), when the study measured it and ``value`` is not itself an accuracy."""
    group = _group_of(value)
    name = "accuracy" if group is None else f"accuracy_{group}"
    if value == name or not doc["methods"]:
        return None
    return name if all(name in m["summary"] for m in doc["methods"].values()) else None


def _accuracy_cell(m: dict[str, Any], name: str, base: dict[str, Any]) -> str:
    mean, ref = m["summary"][name].get("mean"), base["summary"][name].get("mean")
    if mean is None:
        return "–"
    return _fmt(mean) if m is base or ref is None else f"{_fmt(mean)} ({_signed(mean - ref)})"


def _appendix(doc: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """Every value x method in one table of fixed width, however many methods there are."""
    base = doc["baseline"]
    head = ["value", "group", "better", "method", "per seed", "mean ± sd", f"diff vs {base}",
            "95% t-interval", "p image (CMH)", "2-stage bootstrap"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        v = row["value"]
        for label, m in doc["methods"].items():
            d = m["difference_to_baseline"][v] if m["difference_to_baseline"] else None
            cells = [v, row["group"] or "", row["direction"], label, _seed_values(m["summary"][v]),
                     _mean_sd(m["summary"][v])]
            cells += ["", "", "", ""] if d is None else [
                _signed(d["diff_mean"]), _interval(d["t_interval"]), _p(d.get("p_image")),
                _interval(d.get("bootstrap_2stage"))]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _accuracy_ceiling(doc: dict[str, Any]) -> list[str]:
    """Conditional accuracy of each method next to the classifier's held-out accuracy on real
    images (its ceiling: a sample cannot be recognised more reliably than a real image)."""
    clf = doc.get("classifier") or {}
    held = clf.get("held_out") or {}
    names = [v["value"] for v in doc["values"] if rate_of(v["value"]) and rate_of(v["value"])[0] == "accuracy"]
    if not names or not held:
        return []
    groups = doc.get("groups") or {}
    per_class = held.get("per_class_accuracy") or []

    def ceiling(name: str) -> Optional[float]:
        g = _group_of(name)
        classes = range(len(per_class)) if g is None else groups.get(g) or []
        known = [per_class[c] for c in classes if c < len(per_class) and per_class[c] is not None]
        return sum(known) / len(known) if known else None

    head = ["method"] + names
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, m in doc["methods"].items():
        lines.append("| " + " | ".join([label] + [_mean_sd(m["summary"][n]) for n in names]) + " |")
    lines.append("| " + " | ".join(["**classifier, held-out real images (ceiling)**"]
                                    + [_fmt(ceiling(n)) for n in names]) + " |")
    counts = held.get("per_class_count") or []
    lines += ["", f"Classifier held-out accuracy per class ({sum(counts)} real images, "
              f"{min(counts) if counts else 0}-{max(counts) if counts else 0} per class, never seen in its "
              "training nor in the diffusion training set): "
              + ", ".join(f"{c}: {_fmt(a)}" for c, a in enumerate(per_class))]
    return lines


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
        lines += _primary_table(doc, row["value"])
    lines += _secondary(doc)
    lines += ["", "## Sampling cost (report sets: sampling and writing, not evaluation)", ""]
    lines += cost_lines(doc["methods"])
    ceiling = _accuracy_ceiling(doc)
    if ceiling:
        lines += ["", "## Conditional accuracy next to the classifier's ceiling", ""] + ceiling
    rest = [r for r in rows if not r["primary"]]
    if rest:
        order = {None: 0, "head": 1, "medium": 2, "tail": 3}
        rest = sorted(rest, key=lambda r: (order[r["group"]], rows.index(r)))
        lines += ["", "## Appendix: every other value (all samples, then head / medium / tail)", ""]
        lines += _appendix(doc, rest)
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


def write_outputs(plan: "StudyPlan", results: dict[str, dict[str, Any]], out_dir: Path,
                  classifier: Optional[dict[str, Any]] = None,
                  heldout: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Write compare.json, compare.md and the plots; return the document."""
    from .compare_plots import write_plots
    from .curves import write_curve_plots
    from .memorization_evidence import write_ratio_histogram

    doc = build_document(plan, results, classifier, heldout)
    plots = write_plots(doc, out_dir / PLOTS) + write_curve_plots(doc, out_dir / PLOTS)
    hist = write_ratio_histogram(results, _records, heldout, out_dir / PLOTS / "memorization-d1-d2.png")
    plots += [hist] if hist is not None else []
    doc["plots"] = [str(p) for p in plots]
    atomic_write_text(out_dir / COMPARE_JSON, json.dumps(doc, indent=2, allow_nan=False, default=str) + "\n")
    atomic_write_text(out_dir / COMPARE_MD, markdown(doc))
    return doc
