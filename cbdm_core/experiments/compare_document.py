"""``compare.json``: the document of a finished ``cbdm compare`` study (every number): the
reported values and their directions, per-seed values, mean ± sd, paired differences to the
baseline with their seed-level and image-level tests, Holm's correction over the primary tests."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

from .arms import arm_summary
from .compare_rates import check_records_complete, group_of, image_level, rate_of, read_records
from .protocol import protocol_dict
from .sampling_cost import cost_summary
from .stats import holm, paired_difference, summarize

if TYPE_CHECKING:
    from .compare_plan import StudyPlan

FORMAT = "cbdm-compare/2"


def reported_values(plan: "StudyPlan", docs: list[dict[str, Any]]) -> list[str]:
    """The scores to report: primary endpoints first (in protocol order), then every declared,
    rankable, non-per-class value the report metrics returned."""
    from ..evaluation.values import summary_values

    names: list[str] = []
    for d in docs:
        names.extend(k for k in d.get("values", {}) if k not in names)
    rest = [v for v in summary_values(names, plan.evaluation.metrics) if v not in plan.protocol.primary]
    return list(plan.protocol.primary) + rest


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
    every = {(label, r["seed"]): r["samples"] for label, res in results.items() for r in res["reports"]}
    records_of = {k: read_records(f) for k, f in every.items()}  # each file read once
    check_records_complete(records_of, every)
    base_records = {r["seed"]: records_of[(base, r["seed"])] for r in results[base]["reports"]}
    methods: dict[str, Any] = {}
    for label, res in results.items():
        entry = res["entry"]
        by_seed = {r["seed"]: r["doc"].get("values", {}) for r in res["reports"]}
        summary = {v: {**vars(summarize([by_seed[s].get(v) for s in p.seeds])),
                       "per_seed": {s: by_seed[s].get(v) for s in p.seeds}} for v in values}
        difference = None
        if label != base:
            records = {"method": {r["seed"]: records_of[(label, r["seed"])] for r in res["reports"]},
                       "base": base_records}
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
        "values": [{"value": v, "direction": directions[v], "primary": v in p.primary, "group": group_of(v)}
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
        "memorization_evidence": evidence(results, read_records, heldout, {g: c or [] for g, c in groups.items()}),
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
        entry = methods[t["method"]]["difference_to_baseline"][t["value"]]
        entry["p_holm"], entry["holm_test"] = adjusted, t["test"]  # which test the adjusted p came from
    return tests


def _mean(values: list[Optional[float]]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None
