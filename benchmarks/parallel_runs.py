"""Training throughput of small runs: one run at 1 or 2 threads, or two 1-thread runs side by side.

    python benchmarks/parallel_runs.py --steps 600

Why: `cbdm compare --jobs N` trains N runs at once with the threads split between them. Whether
that pays depends on how well one run uses the cores; on small networks (the digits-lt U-Net,
8x8 images, batch 64) a second thread helps little or even hurts. Each row runs real `cbdm train`
processes (the digits-lt configuration: quickstart preset, imbalance 0.03) and reads the images
per second the run itself logs, averaged over the records after the first (start-up excluded).
The last column is the total images per second of the row against one 2-thread run of the same
method (the `cbdm compare --jobs 1` way).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from train_step import cpu_model  # the same CPU line in every benchmark table


def _start(out: Path, method: str, threads: int, steps: int, log_every: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "cli", "train", "--method", method, "--imb-factor", "0.03", "--steps", str(steps),
           "--log-every", str(log_every), "--seed", "0", "--out", str(out)]
    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _rate(out: Path) -> float:
    """Mean logged img/s after the first record."""
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["images_per_sec"] for r in recs[1:] if "images_per_sec" in r]
    return sum(rates) / len(rates)


def _row(work: Path, name: str, runs: list[tuple[str, int]], steps: int, log_every: int) -> list[float]:
    procs = [(_start(work / f"{name}-{i}", m, t, steps, log_every), work / f"{name}-{i}") for i, (m, t) in enumerate(runs)]
    rates = []
    for proc, out in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{name}: cbdm train failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
        rates.append(_rate(out))
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--log-every", type=int, default=100)
    args = p.parse_args()
    print(f"CPU: {cpu_model()}; {os.cpu_count()} logical CPUs; digits-lt quickstart, batch 64, {args.steps} steps")
    rows = [
        ("ddpm, 1 run x 2 threads", [("ddpm", 2)]),
        ("ddpm, 1 run x 1 thread", [("ddpm", 1)]),
        ("cbdm, 1 run x 2 threads", [("cbdm", 2)]),
        ("cbdm, 1 run x 1 thread", [("cbdm", 1)]),
        ("ddpm + ddpm, 2 runs x 1 thread", [("ddpm", 1), ("ddpm", 1)]),
        ("cbdm + cbdm, 2 runs x 1 thread", [("cbdm", 1), ("cbdm", 1)]),
        ("ddpm + cbdm, 2 runs x 1 thread", [("ddpm", 1), ("cbdm", 1)]),
    ]
    base: dict[str, float] = {}
    print(f"| {'row':34} | img/s per run | total img/s | vs 1 run x 2 threads |")
    print(f"|{'-' * 36}|---------------|-------------|----------------------|")
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, runs) in enumerate(rows):
            rates = _row(Path(tmp), f"row{index}", runs, args.steps, args.log_every)
            total = sum(rates)
            methods = {m for m, _ in runs}
            if len(runs) == 1 and runs[0][1] == 2:
                base[runs[0][0]] = total
            ref = base.get(runs[0][0]) if len(methods) == 1 else None  # a mixed row has no single reference
            ratio = f"{total / ref:.2f}x" if ref else "-"
            print(f"| {name:34} | {' + '.join(f'{r:.0f}' for r in rates):13} | {total:11.0f} | {ratio:>20} |")


if __name__ == "__main__":
    main()
