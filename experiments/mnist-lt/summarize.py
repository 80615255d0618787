"""Summarise the MNIST-LT DDPM-vs-CBDM runs: mean and spread over seeds, and a per-class plot.

    python experiments/mnist-lt/summarize.py RUN_ROOT [RUN_ROOT ...] --out docs/results

Reads ``<root>/<method>-s<seed>-samples/metrics.json`` (written by run.sh) and prints a
Markdown table (mean +- sample standard deviation over seeds, and every seed's value),
then writes ``mnist-lt.json`` and ``mnist-lt-per-class.png`` to --out.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from matplotlib.figure import Figure

METRICS = [("fid", "FID", "lower"), ("precision", "precision", "higher"), ("recall", "recall (k=5)", "higher"),
           ("f8", "F_8", "higher"), ("f1_8", "F_1/8", "higher"), ("is", "IS", "higher"),
           ("fid_head", "FID head (0-2)", "lower"), ("fid_medium", "FID medium (3-6)", "lower"),
           ("fid_tail", "FID tail (7-9)", "lower")]
METHODS = ("ddpm", "cbdm")
NAME = re.compile(r"^(ddpm|cbdm)-s(\d+)-samples$")


def collect(roots: list[Path]) -> dict[str, dict[int, dict]]:
    runs: dict[str, dict[int, dict]] = {m: {} for m in METHODS}
    for root in roots:
        for folder in sorted(root.iterdir()):
            m = NAME.match(folder.name)
            if m and (folder / "metrics.json").is_file():
                runs[m.group(1)][int(m.group(2))] = json.loads((folder / "metrics.json").read_text())
    return runs


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("roots", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("."))
    args = p.parse_args()
    runs = collect(args.roots)
    seeds = sorted(set(runs["ddpm"]) & set(runs["cbdm"]))
    if not seeds:
        raise SystemExit("no seed has both a ddpm and a cbdm metrics.json")
    summary: dict = {"seeds": seeds, "metrics": {}}
    print(f"seeds: {', '.join(map(str, seeds))}\n")
    print("| metric | better | DDPM | CBDM | CBDM better in |")
    print("|---|---|---|---|---|")
    for key, label, better in METRICS:
        vals = {m: [runs[m][s]["values"][key] for s in seeds] for m in METHODS}
        wins = sum((c < d) if better == "lower" else (c > d) for d, c in zip(vals["ddpm"], vals["cbdm"]))
        summary["metrics"][key] = {**vals, "better": better, "cbdm_wins": wins}
        print(f"| {label} | {better} | {fmt(vals['ddpm'])} | {fmt(vals['cbdm'])} | {wins}/{len(seeds)} seeds |")
    print("\nper seed (DDPM / CBDM):\n")
    print("| seed | " + " | ".join(label for _, label, _ in METRICS[:5]) + " |")
    print("|---" * 6 + "|")
    for s in seeds:
        cells = [f"{runs['ddpm'][s]['values'][k]:.4g} / {runs['cbdm'][s]['values'][k]:.4g}" for k, _, _ in METRICS[:5]]
        print(f"| {s} | " + " | ".join(cells) + " |")

    fig = Figure(figsize=(7, 4.2), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    for method, color in zip(METHODS, ("tab:blue", "tab:orange")):
        per_seed = [{c["class"]: c["fid"] for c in runs[method][s]["per_class"]} for s in seeds]
        classes = sorted(per_seed[0])
        counts = {c["class"]: c["train_count"] for c in runs[method][seeds[0]]["per_class"]}
        means = [statistics.mean(d[c] for d in per_seed) for c in classes]
        xs = [counts[c] for c in classes]
        ax.plot(xs, means, marker="o", color=color, label=f"{method.upper()} (mean of {len(seeds)} seeds)")
        for d in per_seed:
            ax.scatter(xs, [d[c] for c in classes], s=8, color=color, alpha=0.35)
        summary.setdefault("per_class_mean", {})[method] = dict(zip(map(str, classes), means))
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (MNIST-LT, imbalance 0.01)")
    ax.set_ylabel("per-class FID (classifier features)")
    ax.set_title("MNIST-LT: per-class FID, 200 samples per class, DDIM-50, w = 1", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "mnist-lt-per-class.png", format="png")
    (args.out / "mnist-lt.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {args.out / 'mnist-lt.json'} and {args.out / 'mnist-lt-per-class.png'}")


if __name__ == "__main__":
    main()
