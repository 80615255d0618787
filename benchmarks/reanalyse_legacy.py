"""Re-analyse the legacy digits-LT studies with the project's statistics (issue 23 item 9).

    python benchmarks/reanalyse_legacy.py            # prints markdown, writes the JSON below
    python benchmarks/reanalyse_legacy.py --out -    # prints markdown only

The studies' runs and samples are gone; what is left are the committed JSON files under
``docs/results/`` (``digits-lt-compare``, ``digits-lt-finetune``, the pilot ``digits-lt-tail``).
From those alone this script gives, per comparison (method vs baseline, at one w per arm):
every seed's value, mean ± sd over seeds, the per-seed paired differences, their 95% paired
t-interval (df = n - 1) and paired t-test, and, for rates over images (memorisation,
conditional accuracy), an image-level Cochran-Mantel-Haenszel test stratified by seed x class
and a two-stage bootstrap interval. The image counts are RECONSTRUCTED as per-class rate x
samples of that class (the files hold no per-image records); a reconstruction that is not an
integer is refused. Every statistic is :mod:`cbdm_core.experiments.stats`'s.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from cbdm_core.experiments.stats import (
    FEW_SEEDS, cmh_test, holm, paired_difference, summarize, two_stage_bootstrap)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
OUT_JSON = RESULTS / "legacy-reanalysis.json"
COMMAND = "python benchmarks/reanalyse_legacy.py"
TAIL = [6, 7, 8, 9]
HEAD = [0]
COUNT_NOTE = ("image counts are reconstructed as per-class rate x samples per class from the "
              "committed JSON (no per-image records survive); the sets are class-balanced")


@dataclass(frozen=True)
class Endpoint:
    """A value of a sample set: ``stem`` names the per-class rate behind it (``None``: not a
    rate over images, so seed-level statistics only); ``classes`` the group it averages."""

    value: str
    stem: Optional[str]
    classes: list[int]
    role: str


ENDPOINTS = [
    Endpoint("memorization_pixels_tail", "memorization_pixels", TAIL, "primary (lower is better)"),
    Endpoint("coverage_tail", None, TAIL, "primary (higher is better)"),
    Endpoint("accuracy_tail", "accuracy", TAIL, "guard: tail conditional accuracy"),
    Endpoint("memorization_pixels_head", "memorization_pixels", HEAD, "context: head memorisation"),
    Endpoint("recall_tail", None, TAIL, "context: tail recall"),
    Endpoint("accuracy", "accuracy", list(range(10)), "context: conditional accuracy, all classes"),
    Endpoint("fid", None, [], "context: FID in classifier features (report sets only)"),
]


@dataclass(frozen=True)
class SampleSet:
    """One evaluated sample set: its summary values and per-class rows (``class``, ``samples``, rates)."""

    values: dict[str, float]
    per_class: list[dict[str, Any]]


Arm = dict[int, SampleSet]  # training seed -> its sample set


def arm_from_compare(compare: dict[str, Any], label: str) -> Arm:
    """The report sets of method ``label`` in a legacy ``compare.json`` (one per training seed)."""
    return {int(r["seed"]): SampleSet(r["report"]["values"], r["report"]["per_class"])
            for r in compare["methods"][label]["runs"]}


def arm_from_evals(files: dict[int, Path]) -> Arm:
    """Sample sets from ``cbdm eval`` metrics.json files, keyed by training seed."""
    out = {}
    for seed, path in files.items():
        doc = json.loads(path.read_text())
        out[seed] = SampleSet(doc["values"], doc["per_class"])
    return out


def reconstruct_counts(s: SampleSet, stem: str, classes: list[int]) -> dict[int, tuple[int, int]]:
    """``{class: (events, images)}`` = per-class rate x samples, rounded; refuses a rate whose
    product is not within 1e-6 of an integer (the reconstruction would then be wrong)."""
    out = {}
    for row in s.per_class:
        c = int(row["class"])
        if c not in classes or row.get(stem) is None:
            continue
        n = int(row["samples"])
        x = float(row[stem]) * n
        k = int(round(x))
        if abs(x - k) > 1e-6:
            raise ValueError(f"class {c}: {stem} {row[stem]} x {n} samples is not a count")
        out[c] = (k, n)
    return out


def _flags(counts: dict[int, tuple[int, int]]) -> np.ndarray:
    """0/1 outcomes with the reconstructed counts (order is irrelevant to every statistic used)."""
    return np.concatenate([np.r_[np.ones(k), np.zeros(n - k)] for k, n in counts.values()])


def _clopper_pearson(k: int, n: int) -> list[float]:
    """Exact 95% interval of a pooled rate ``k / n`` (scipy ``binomtest``)."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return [float(ci.low), float(ci.high)]


def _cmh_corrected(tables: list) -> Optional[float]:
    """The same CMH test with the continuity correction (statsmodels ``correction=True``): only a
    cross-check, since the issue's quoted p-values (3e-5, 0.77) were computed that way; the
    reported ``p_image`` is the project's :func:`cmh_test` (no correction)."""
    from statsmodels.stats.contingency_tables import StratifiedTable

    kept = [np.asarray(t, float) for t in tables
            if np.all(np.asarray(t, float).sum(0) > 0) and np.all(np.asarray(t, float).sum(1) > 0)]
    return float(StratifiedTable(np.stack(kept, axis=2)).test_null_odds(correction=True).pvalue) if kept else None


def compare_endpoint(ep: Endpoint, method: Arm, base: Arm, *, resamples: int) -> dict[str, Any]:
    """Seed-level and (for rates) image-level evidence on ``method - baseline`` for one value."""
    seeds = sorted(set(method) & set(base))
    m = [method[s].values.get(ep.value) for s in seeds]
    b = [base[s].values.get(ep.value) for s in seeds]
    d = paired_difference(m, b)
    sm, sb = summarize(m), summarize(b)
    out: dict[str, Any] = {
        "value": ep.value, "role": ep.role, "seeds": seeds,
        "method_per_seed": m, "baseline_per_seed": b,
        "method_mean": sm.mean, "method_sd": sm.sd, "baseline_mean": sb.mean, "baseline_sd": sb.sd,
        "diff_per_seed": d.per_seed, "diff_mean": d.mean,
        "t_interval": [d.low, d.high], "t_interval_label": f"95% paired t-interval over {d.n} seeds (df = {d.n - 1})",
        "p_seed": d.p, "p_seed_label": "paired t-test over seeds",
    }
    if ep.stem is None:
        out["image_level"] = None
        return out
    tables, mf, bf = [], [], []
    events, images = [0, 0], [0, 0]
    for s in seeds:
        cm, cb = reconstruct_counts(method[s], ep.stem, ep.classes), reconstruct_counts(base[s], ep.stem, ep.classes)
        for c in ep.classes:
            (km, nm), (kb, nb) = cm[c], cb[c]
            tables.append([[km, nm - km], [kb, nb - kb]])
            events[0] += km; events[1] += kb; images[0] += nm; images[1] += nb
        mf.append(_flags(cm)); bf.append(_flags(cb))
    test = cmh_test(tables)
    corrected = _cmh_corrected(tables)
    low, high = two_stage_bootstrap(mf, bf, resamples=resamples, seed=0)
    out["image_level"] = {
        "events": events, "images": images,
        "pooled": f"{events[1]}/{images[1]} vs {events[0]}/{images[0]}", "pooled_order": "baseline vs method",
        "p_image": test.p, "p_image_continuity_corrected": corrected, "cmh_statistic": test.statistic, "cmh_strata": test.strata, "odds_ratio_mh": test.odds_ratio,
        "test_label": "Cochran-Mantel-Haenszel (statsmodels StratifiedTable), strata seed x class, no continuity correction",
        "bootstrap_2stage": [low, high],
        "bootstrap_label": f"95% two-stage bootstrap (seeds, then images within seed; {resamples} resamples) of the pooled rate difference",
        "pooled_ci_baseline": _clopper_pearson(events[1], images[1]),
        "pooled_ci_method": _clopper_pearson(events[0], images[0]),
        "pooled_ci_label": "95% Clopper-Pearson interval of each arm's pooled rate (images only; ignores seed variation)",
        "tables": tables, "counts_note": COUNT_NOTE,
    }
    return out


@dataclass(frozen=True)
class Comparison:
    """One method-vs-baseline comparison at stated guidance weights."""

    key: str
    study: str
    title: str
    status: str
    method: str
    baseline: str
    w_method: float
    w_baseline: float
    sets: str


def _legacy_interval(compare: dict[str, Any], label: str, value: str) -> Optional[list[float]]:
    """The interval the legacy report printed as '95% bootstrap' (in fact [min, max] of 3 diffs)."""
    d = compare["methods"][label].get("difference_to_baseline", {}).get(value)
    return None if d is None else [d["low"], d["high"]]


def _evals(folder: Path, pattern: str, seeds: list[int]) -> Arm:
    return arm_from_evals({s: folder / pattern.format(s=s) for s in seeds})


def study_arms(results: Path) -> list[tuple[Comparison, Arm, Arm, Optional[dict[str, Any]]]]:
    """Every comparison this re-analysis makes, with its two arms and (where one exists) the
    legacy compare.json whose printed intervals it replaces."""
    cmp1 = json.loads((results / "digits-lt-compare" / "compare.json").read_text())
    cmp2 = json.loads((results / "digits-lt-finetune" / "compare.json").read_text())
    w1 = results / "digits-lt-compare" / "w1-exploratory"
    mw = results / "digits-lt-finetune" / "matched-w-exploratory"
    tail = results / "digits-lt-tail"
    s3 = [0, 1, 2]
    out = [
        (Comparison("compare-w0", "digits-lt-compare", "CBDM vs DDPM at the protocol's w (FID chose w = 0 for both)",
                    "pre-registered", "cbdm", "ddpm", 0.0, 0.0, "report sets, sampling seed 0 for every training seed"),
         arm_from_compare(cmp1, "cbdm"), arm_from_compare(cmp1, "ddpm"), cmp1),
        (Comparison("compare-w1", "digits-lt-compare", "CBDM vs DDPM at w = 1", "exploratory, not pre-registered",
                    "cbdm", "ddpm", 1.0, 1.0, "selection sets, sampling seed 1 for every training seed"),
         _evals(w1, "cbdm-s{s}.json", s3), _evals(w1, "ddpm-s{s}.json", s3), None),
        (Comparison("finetune-protocol", "digits-lt-finetune",
                    "cbdm-finetune (w = 1) vs ddpm-continued (w = 0), each at the w its FID chose",
                    "pre-registered (arms at different w)", "cbdm-finetune", "ddpm-continued", 1.0, 0.0,
                    "report sets, sampling seed 0"),
         arm_from_compare(cmp2, "cbdm-finetune"), arm_from_compare(cmp2, "ddpm-continued"), cmp2),
        (Comparison("finetune-w0", "digits-lt-finetune", "cbdm-finetune vs ddpm-continued, both at w = 0",
                    "exploratory, not pre-registered", "cbdm-finetune", "ddpm-continued", 0.0, 0.0,
                    "selection sets, sampling seed 1"),
         _evals(mw, "cbdm-finetune-w0-s{s}.json", s3), _evals(mw, "ddpm-continued-w0-s{s}.json", s3), None),
        (Comparison("finetune-w1", "digits-lt-finetune", "cbdm-finetune vs ddpm-continued, both at w = 1",
                    "exploratory, not pre-registered", "cbdm-finetune", "ddpm-continued", 1.0, 1.0,
                    "selection sets, sampling seed 1"),
         _evals(mw, "cbdm-finetune-w1-s{s}.json", s3), _evals(mw, "ddpm-continued-w1-s{s}.json", s3), None),
        (Comparison("continued-vs-pretrained", "digits-lt-finetune",
                    "ddpm-continued (6000 + 2000 steps, fresh optimiser, warm-up and EMA) vs ddpm (6000 steps), w = 0",
                    "exploratory (the protocol's baseline choice, not a pre-registered test)",
                    "ddpm-continued", "ddpm", 0.0, 0.0, "report sets, sampling seed 0"),
         arm_from_compare(cmp2, "ddpm-continued"), arm_from_compare(cmp2, "ddpm"), None),
        (Comparison("pilot-w1", "digits-lt-tail", "pilot: CBDM vs DDPM at 6000 steps, w = 1, fp32, 2 seeds",
                    "pilot", "cbdm", "ddpm", 1.0, 1.0, "sampling seed 0"),
         _evals(tail, "cbdm-seed{s}-6000.json", [0, 1]), _evals(tail, "ddpm-seed{s}-6000.json", [0, 1]), None),
        (Comparison("pilot-steps", "digits-lt-tail",
                    "pilot: DDPM 9000 vs 6000 steps of one uninterrupted run (seed 0), w = 1", "pilot, 1 seed",
                    "ddpm-9000", "ddpm-6000", 1.0, 1.0, "sampling seed 0"),
         arm_from_evals({0: tail / "ddpm-seed0-9000.json"}), arm_from_evals({0: tail / "ddpm-seed0-6000.json"}), None),
    ]
    return out


def drift_bound(method: Arm, base: Arm) -> dict[str, Any]:
    """How much of the tail-memorisation reduction class drift can explain (pooled tail counts).

    Memorisation is grouped by the requested class, so a sample that drifts out of its class
    lowers that class's rate. If the method copied among its in-class samples at the baseline's
    in-class rate (at most ``m_b / acc_b``, all copies in class), drift alone would bring its rate
    to ``acc_m · m_b / acc_b``: the share of the observed reduction that drift explains is then at
    most ``(m_b - acc_m · m_b / acc_b) / (m_b - m_m)``. The method's own in-class copy rate is at
    most ``m_m / acc_m``."""
    def pooled(arm: Arm, stem: str) -> float:
        k = n = 0
        for s in arm.values():
            for kk, nn in reconstruct_counts(s, stem, TAIL).values():
                k += kk; n += nn
        return k / n
    m_m, m_b = pooled(method, "memorization_pixels"), pooled(base, "memorization_pixels")
    a_m, a_b = pooled(method, "accuracy"), pooled(base, "accuracy")
    no_change = a_m * m_b / a_b
    share = (m_b - no_change) / (m_b - m_m) if m_b != m_m else None
    return {"mem_method": m_m, "mem_baseline": m_b, "acc_method": a_m, "acc_baseline": a_b,
            "in_class_rate_method_max": m_m / a_m, "in_class_rate_baseline_max": m_b / a_b,
            "rate_if_only_drift": no_change, "drift_share_max": share}


def noise_check(arm: Arm, value: str, n_images: int) -> dict[str, Any]:
    """Seed-to-seed sd of a rate vs the binomial standard error of one set's ``n_images``."""
    s = summarize([arm[k].values[value] for k in sorted(arm)])
    return {"value": value, "sd_over_seeds": s.sd, "mean": s.mean, "n_images": n_images,
            "binomial_se": math.sqrt(s.mean * (1 - s.mean) / n_images)}


def reanalyse(results: Path = RESULTS, *, resamples: int = 10_000) -> dict[str, Any]:
    """The whole re-analysis as one JSON-able dict (the script's core function)."""
    comparisons = []
    arms = study_arms(results)
    for comp, m, b, legacy in arms:
        eps = [compare_endpoint(ep, m, b, resamples=resamples) for ep in ENDPOINTS]
        if legacy is not None:
            for e in eps:
                e["legacy_interval"] = _legacy_interval(legacy, comp.method, e["value"])
                e["legacy_interval_label"] = ("printed as '95% bootstrap interval'; with 3 seeds it is "
                                              "[min, max] of the per-seed differences")
        entry = {**comp.__dict__, "endpoints": eps}
        if comp.status.startswith("pre-registered"):
            prim = [e for e in eps if e["role"].startswith("primary")]
            ps = [e["image_level"]["p_image"] if e["image_level"] else e["p_seed"] for e in prim]
            entry["holm"] = [{"value": e["value"], "test": "CMH (images)" if e["image_level"] else "paired t (seeds)",
                              "p": p, "p_holm": ph} for e, p, ph in zip(prim, ps, holm(ps))]
        comparisons.append(entry)
    by_key = {c.key: (m, b) for c, m, b, _ in arms}
    derived = {
        "drift_compare_w0": drift_bound(*by_key["compare-w0"]),
        "drift_finetune_w0": drift_bound(*by_key["finetune-w0"]),
        "noise_ddpm_w0": noise_check(by_key["compare-w0"][1], "memorization_pixels_tail", 200),
    }
    return {"format": "cbdm-legacy-reanalysis/1", "command": COMMAND, "counts_note": COUNT_NOTE,
            "few_seeds_note": (f"below {FEW_SEEDS} seeds a seed-level interval is weak (t quantile 4.30 at "
                               "df = 2, 12.7 at df = 1); every training seed's report set used the same "
                               "sampling seed, so sampling noise is common to all seeds and not in these intervals"),
            "comparisons": comparisons, "derived": derived}


# ---------------------------------------------------------------- markdown

def _f(x: Optional[float], nd: int = 3, sign: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def _iv(iv: Optional[list], nd: int = 3) -> str:
    if not iv or iv[0] is None:
        return "–"
    return f"[{_f(iv[0], nd, True)}, {_f(iv[1], nd, True)}]"


def _p(p: Optional[float]) -> str:
    if p is None:
        return "–"
    return "< 1e-15" if p < 1e-15 else (f"{p:.2g}" if p < 0.01 else f"{p:.2f}")


def render_markdown(res: dict[str, Any]) -> str:
    """One table per comparison: endpoints as rows, every seed's value, paired stats, CMH."""
    lines = [f"# Legacy studies re-analysed (`{res['command']}`)", "", f"Note: {res['counts_note']}.",
             f"Note: {res['few_seeds_note']}.", ""]
    for c in res["comparisons"]:
        lines += [f"## {c['study']}: {c['title']}", "",
                  f"*{c['status']}*; {c['method']} at w = {c['w_method']:g} vs {c['baseline']} at w = "
                  f"{c['w_baseline']:g}; {c['sets']}.", "",
                  f"| value | {c['baseline']} per seed | {c['method']} per seed | {c['baseline']} mean ± sd "
                  f"| {c['method']} mean ± sd | difference per seed | mean diff | 95% paired t-interval "
                  f"| p (paired t) | pooled images, {c['baseline']} vs {c['method']} (reconstructed) | p (CMH, seed x class) | 95% two-stage bootstrap |",
                  "| --- | --- | --- | --- | --- | --- | ---: | --- | ---: | --- | ---: | --- |"]
        for e in c["endpoints"]:
            if e["method_mean"] is None and e["baseline_mean"] is None:
                continue  # not measured on these sets (FID of re-evaluated selection sets)
            il = e["image_level"]
            lines.append("| " + " | ".join([
                f"{e['value']} ({e['role'].split(':')[0].split(' (')[0]})",
                " / ".join(_f(v) for v in e["baseline_per_seed"]), " / ".join(_f(v) for v in e["method_per_seed"]),
                f"{_f(e['baseline_mean'])} ± {_f(e['baseline_sd'])}", f"{_f(e['method_mean'])} ± {_f(e['method_sd'])}",
                " / ".join(_f(v, 3, True) for v in e["diff_per_seed"]), _f(e["diff_mean"], 3, True),
                _iv(e["t_interval"], 4), _p(e["p_seed"]),
                (f"{il['pooled']}" if il else "not a rate over images"),
                _p(il["p_image"]) if il else "–", _iv(il["bootstrap_2stage"]) if il else "–"]) + " |")
        if any("legacy_interval" in e for e in c["endpoints"]):
            lines += ["", "Legacy '95% bootstrap interval' (= [min, max] of the per-seed differences): "
                      + "; ".join(f"{e['value']} {_iv(e['legacy_interval'])}" for e in c["endpoints"]
                                  if e.get("legacy_interval"))]
        quoted = [e for e in c["endpoints"] if e["image_level"] and e["value"] == "memorization_pixels_tail"]
        if quoted:
            lines += ["", "Cross-check: the CMH p-value of tail memorisation with the continuity correction is "
                      f"{_p(quoted[0]['image_level']['p_image_continuity_corrected'])} (the table's p is uncorrected, "
                      "as `cbdm compare` reports it)."]
        if "holm" in c:
            lines += ["", "Holm over the pre-registered primary tests of this comparison: "
                      + "; ".join(f"{h['value']} {h['test']} p = {_p(h['p'])} -> Holm {_p(h['p_holm'])}" for h in c["holm"])]
        lines.append("")
    d = res["derived"]
    lines += ["## Derived checks", ""]
    for key, title in (("drift_compare_w0", "digits-lt-compare, w = 0"), ("drift_finetune_w0", "digits-lt-finetune, both at w = 0")):
        x = d[key]
        lines.append(f"- Drift bound ({title}): tail memorisation {x['mem_baseline']:.3f} -> {x['mem_method']:.3f}, "
                     f"tail accuracy {x['acc_baseline']:.3f} -> {x['acc_method']:.3f}; with the baseline's in-class "
                     f"copy rate (<= {x['in_class_rate_baseline_max']:.3f}) drift alone gives {x['rate_if_only_drift']:.3f}, "
                     f"i.e. at most {100 * x['drift_share_max']:.0f}% of the reduction; the method's own in-class copy "
                     f"rate is <= {x['mem_method']:.3f}/{x['acc_method']:.3f} = {x['in_class_rate_method_max']:.3f}.")
    n = d["noise_ddpm_w0"]
    lines += [f"- DDPM tail memorisation at w = 0: sd over seeds {n['sd_over_seeds']:.3f} vs binomial standard "
              f"error of {n['n_images']} tail samples at the mean rate {n['binomial_se']:.3f}.", ""]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder holding the legacy studies")
    ap.add_argument("--out", default=str(OUT_JSON), help="JSON to write ('-': none)")
    ap.add_argument("--resamples", type=int, default=10_000, help="two-stage bootstrap resamples")
    args = ap.parse_args(argv)
    res = reanalyse(args.results, resamples=args.resamples)
    print(render_markdown(res))
    if args.out != "-":
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
