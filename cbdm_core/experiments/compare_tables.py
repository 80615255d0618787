"""The tables of ``compare.md``: one per primary endpoint (methods as rows, every seed's value,
the paired difference and its tests), the appendix of every other value, and conditional
accuracy next to the classifier's ceiling; with the number formats they share."""

from __future__ import annotations

import math
from typing import Any, Optional

from .compare_rates import group_of, rate_of


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


def primary_table(doc: dict[str, Any], value: str) -> list[str]:
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
            holm_p = _p(d.get("p_holm"))
            if d.get("p_holm") is not None and d.get("holm_test", "").startswith("paired t"):
                holm_p += " (t)"  # the rate's CMH had no informative strata: the seed t-test stands in
            cells += [_signed(d["diff_mean"]), _interval(d["t_interval"]), _p(d.get("p_image")), holm_p]
        if accuracy:
            cells.append(_accuracy_cell(m, accuracy, doc["methods"][base]))
        lines.append("| " + " | ".join(cells) + " |")
    if any(d.get("p_holm") is not None and d.get("holm_test", "").startswith("paired t")
           for d in ((m["difference_to_baseline"] or {}).get(value, {}) for m in doc["methods"].values())):
        lines += ["", "`p Holm` marked (t): adjusted from the paired t-test over seeds (for a rate: its image-level "
                  "CMH test had no informative stratum, e.g. no event in any stratum)."]
    if accuracy:
        lines += ["", f"`{accuracy}`: the share of this group's samples the feature classifier assigns to the "
                  "requested class (mean over seeds; in brackets the difference to the baseline). A method "
                  "whose samples leave their class can copy less or cover more for that reason alone: read "
                  "each difference above against this column and the protocol's pre-registered guard."]
    return lines


def _accuracy_beside(doc: dict[str, Any], value: str) -> Optional[str]:
    """The conditional-accuracy value of ``value``'s group (``accuracy_tail`` beside a tail
    endpoint), when the study measured it and ``value`` is not itself an accuracy."""
    group = group_of(value)
    name = "accuracy" if group is None else f"accuracy_{group}"
    if value == name or not doc["methods"]:
        return None
    return name if all(name in m["summary"] for m in doc["methods"].values()) else None


def _accuracy_cell(m: dict[str, Any], name: str, base: dict[str, Any]) -> str:
    mean, ref = m["summary"][name].get("mean"), base["summary"][name].get("mean")
    if mean is None:
        return "–"
    return _fmt(mean) if m is base or ref is None else f"{_fmt(mean)} ({_signed(mean - ref)})"


def appendix_table(doc: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
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


def accuracy_ceiling_table(doc: dict[str, Any]) -> list[str]:
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
        g = group_of(name)
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
