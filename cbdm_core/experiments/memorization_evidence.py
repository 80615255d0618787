"""Memorisation reported honestly (compare.json ``memorization_evidence``, a section of
compare.md and one plot):

- the held-out-real row: the metric's false-positive rate on real images outside the diffusion
  training set, per head/medium/tail group (:mod:`.heldout`);
- the share of the training images of each group copied at least once by a method's samples
  (from records.csv ``nn_train_index_*`` and ``memorized_*``);
- memorisation among the samples the classifier assigns to their requested class (records.csv
  ``predicted_class``), since a sample that drifts to another class lowers its requested
  class's rate without being any less a copy;
- the d1/d2 ratio of samples against held-out real images (one histogram).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..atomic import atomic_path, ensure_dir

SPACES = ("pixels", "features")
GROUP_NAMES = ("head", "medium", "tail")


def _rate(flags: np.ndarray) -> Optional[float]:
    return float(flags.mean()) if flags.size else None


def heldout_rows(heldout: dict[str, Any], groups: dict[str, list[int]]) -> dict[str, Any]:
    """``{space: {"all": rate, group: rate, "images": {group: n}}}`` of the held-out real images."""
    labels = np.asarray(heldout["labels"])
    out: dict[str, Any] = {}
    for space, cols in heldout["spaces"].items():
        flags = np.asarray(cols["memorized"], dtype=float)
        row: dict[str, Any] = {"all": _rate(flags), "images": {"all": int(flags.size)}}
        for g in GROUP_NAMES:
            if groups.get(g):
                mask = np.isin(labels, groups[g])
                row[g] = _rate(flags[mask])
                row["images"][g] = int(mask.sum())
        out[space] = row
    return out


def copied_share(records: Optional[dict[str, list]], train_labels: np.ndarray, groups: dict[str, list[int]],
                 space: str) -> dict[str, Optional[float]]:
    """Per group: the share of its training images that at least one flagged sample copies."""
    if records is None or records.get(f"memorized_{space}") is None:
        return {}
    copied = {int(i) for i, m in zip(records[f"nn_train_index_{space}"], records[f"memorized_{space}"])
              if i is not None and m}
    out: dict[str, Optional[float]] = {}
    for g in ("all",) + GROUP_NAMES:
        members = np.arange(len(train_labels)) if g == "all" else np.flatnonzero(np.isin(train_labels, groups.get(g) or []))
        if g != "all" and not groups.get(g):
            continue
        out[g] = float(len(copied & set(members.tolist())) / len(members)) if len(members) else None
    return out


def memorized_when_correct(records_list: list[Optional[dict[str, list]]], groups: dict[str, list[int]],
                           space: str) -> dict[str, Any]:
    """Per group (of the requested class), pooled over seeds: memorisation among the samples
    classified as their requested class, with the number of such samples."""
    req, pred, mem = [], [], []
    for r in records_list:
        if r is None or r.get(f"memorized_{space}") is None:
            continue
        for a, b, m in zip(r["requested_class"], r["predicted_class"], r[f"memorized_{space}"]):
            if a is not None and b is not None and m is not None:
                req.append(int(a)), pred.append(int(b)), mem.append(float(m))
    req_a, mem_a = np.asarray(req), np.asarray(mem)
    correct = req_a == np.asarray(pred)
    out: dict[str, Any] = {}
    for g in ("all",) + GROUP_NAMES:
        if g != "all" and not groups.get(g):
            continue
        mask = correct & (np.ones_like(correct) if g == "all" else np.isin(req_a, groups[g]))
        out[g] = {"rate": _rate(mem_a[mask]), "images": int(mask.sum())}
    return out


def evidence(results: dict[str, dict[str, Any]], records_of: Any, heldout: Optional[dict[str, Any]],
             groups: dict[str, list[int]]) -> dict[str, Any]:
    """compare.json's ``memorization_evidence`` (``records_of(folder)``: a folder's records.csv)."""
    train_labels = np.asarray((heldout or {}).get("train_labels") or [])
    methods: dict[str, Any] = {}
    for label, res in results.items():
        recs = {r["seed"]: records_of(r["samples"]) for r in res["reports"]}
        row: dict[str, Any] = {"copied_training_share": {}, "memorized_when_classified_correct": {}}
        for space in SPACES:
            if train_labels.size:
                per_seed = {s: copied_share(rec, train_labels, groups, space) for s, rec in recs.items()}
                names = sorted({g for v in per_seed.values() for g in v}, key=(("all",) + GROUP_NAMES).index)
                row["copied_training_share"][space] = {
                    g: {"mean": _mean([v.get(g) for v in per_seed.values()]),
                        "per_seed": {s: v.get(g) for s, v in per_seed.items()}} for g in names}
            row["memorized_when_classified_correct"][space] = memorized_when_correct(list(recs.values()), groups, space)
        methods[label] = row
    return {"heldout_real": None if heldout is None else {
                "rows": heldout_rows(heldout, groups), "threshold": heldout["threshold"], "rule": heldout["rule"],
                "training_set": heldout.get("training_set")},
            "methods": methods}


def _mean(xs: list[Optional[float]]) -> Optional[float]:
    known = [x for x in xs if x is not None]
    return sum(known) / len(known) if known else None


def ratios(records: Optional[dict[str, list]], space: str = "pixels") -> list[float]:
    """d1/d2 per sample (``d2 = 0``: an exact duplicate pair, ratio 0)."""
    if records is None or records.get(f"d1_{space}") is None:
        return []
    return [0.0 if not d2 else d1 / d2 for d1, d2 in zip(records[f"d1_{space}"], records[f"d2_{space}"])
            if d1 is not None and d2 is not None]


def write_ratio_histogram(results: dict[str, dict[str, Any]], records_of: Any, heldout: Optional[dict[str, Any]],
                          path: Path) -> Optional[Path]:
    """One PNG: the d1/d2 (pixels) distribution of every method's report samples and of the
    held-out real images, with the threshold."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.0), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    bins = np.linspace(0.0, 1.0, 41)
    drawn = False
    for label, res in results.items():
        rs = [x for r in res["reports"] for x in ratios(records_of(r["samples"]))]
        if rs:
            drawn = True
            ax.hist(np.clip(rs, 0, 1), bins=bins, density=True, histtype="step", linewidth=1.4, label=f"{label} samples")
    if heldout is not None:
        cols = heldout["spaces"]["pixels"]
        real = [0.0 if not b else a / b for a, b in zip(cols["d1"], cols["d2"])]
        ax.hist(np.clip(real, 0, 1), bins=bins, density=True, color="grey", alpha=0.4, label="held-out real")
        ax.axvline(heldout["threshold"], color="black", linestyle="--", linewidth=1,
                   label=f"threshold {heldout['threshold']:.3g}")
    if not drawn:
        return None
    ax.set_xlabel("d1 / d2 to the training set (pixels; below the threshold: flagged as a copy)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    ensure_dir(path.parent, "plot folder")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def markdown_lines(ev: dict[str, Any]) -> list[str]:
    """compare.md's memorisation section."""
    lines: list[str] = []
    held = ev.get("heldout_real")
    head = ["row"] + [f"{s} {g}" for s in SPACES for g in ("all",) + GROUP_NAMES]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if held:
        rows = held["rows"]
        cells = [_f(rows.get(s, {}).get(g)) for s in SPACES for g in ("all",) + GROUP_NAMES]
        lines.append("| **held-out real (false positives)** | " + " | ".join(cells) + " |")
    for label, m in ev["methods"].items():
        for what, key in (("training images copied ≥ once", "copied_training_share"),
                          ("memorised among correctly classified", "memorized_when_classified_correct")):
            data = m[key]
            cells = []
            for s in SPACES:
                for g in ("all",) + GROUP_NAMES:
                    v = (data.get(s) or {}).get(g)
                    cells.append(_f(None if v is None else v.get("mean", v.get("rate"))))
            lines.append(f"| {label}: {what} | " + " | ".join(cells) + " |")
    if held:
        n = held["rows"].get("pixels", {}).get("images", {})
        lines += ["", f"Held-out real: {n.get('all', 0)} real images not in the diffusion training set "
                  f"({held['rule']}); head / medium / tail: {n.get('head', 0)} / {n.get('medium', 0)} / "
                  f"{n.get('tail', 0)} images. None is a copy, so each flag is a false positive "
                  f"(d1/d2 < {held['threshold']:.3g}). Copied share: per seed, then the mean over seeds. "
                  "Correctly classified: pooled over seeds."]
    return lines


def _f(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.3g}"
