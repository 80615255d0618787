"""Does bf16 autocast train like fp32 on the CPU? The quickstart preset, a few seeds each.

    OMP_NUM_THREADS=1 python benchmarks/bf16_convergence.py --steps 300 --seeds 0 1 2 --threads 1

Trains the ``quickstart`` preset (CBDM on digits-lt) for ``--steps`` steps with
``perf.amp=off`` and ``perf.amp=bf16`` for every seed (same data order and draws per
seed), and prints the final losses: the mean of the logged ``total`` and ``diffusion``
over the last ``--tail`` steps. bf16 converges like fp32 when its mean final loss lies
within the seed-to-seed spread of fp32's. This is an experiment, not a timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from cbdm_core.config import parse_train_config
from cbdm_core.presets_registry import load_preset
from cbdm_core.training.precision import cpu_bf16_support
from cbdm_core.training.trainer import Trainer


def final_loss(run_dir: Path, tail: int) -> dict[str, float]:
    """Step-weighted mean of the logged terms over the last ``tail`` steps."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]["step"]
    window = [r for r in records if r["step"] > last - tail]
    return {k: statistics.fmean(r[k] for r in window) for k in ("total", "diffusion")}


def train(amp: str, seed: int, steps: int, log_every: int, out: Path) -> dict[str, float]:
    data = load_preset("quickstart")
    data.update(seed=seed, log_every=log_every, device="cpu", preview={"sampler": "ddim", "steps": 2, "per_class": 1})
    data["optim"]["steps"] = steps
    data["perf"] = {"amp": amp, "pass_layout": "joint"}
    run_dir = out / f"{amp}-{seed}"
    Trainer(parse_train_config(data, "quickstart"), run_dir).run()
    return final_loss(run_dir, tail=max(log_every, steps // 3))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=25)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict[str, list[dict[str, float]]] = {"off": [], "bf16": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for amp in results:
                results[amp].append(train(amp, seed, args.steps, args.log_every, Path(tmp)))
                print(f"seed {seed} amp {amp}: {results[amp][-1]}", flush=True)
    print(f"quickstart, {args.steps} steps, seeds {args.seeds}, {args.threads} threads, "
          f"cpu bf16: {cpu_bf16_support() or 'none'}, torch {torch.__version__}; final = mean over the last "
          f"{max(args.log_every, args.steps // 3)} steps")
    print(f"{'amp':<6} {'total per seed':<30} {'mean':>8} {'sd':>8}   {'diffusion mean':>14}")
    for amp, rows in results.items():
        totals = [r["total"] for r in rows]
        sd = statistics.stdev(totals) if len(totals) > 1 else float("nan")
        print(f"{amp:<6} {' '.join(f'{v:.4f}' for v in totals):<30} {statistics.fmean(totals):>8.4f} {sd:>8.4f}"
              f"   {statistics.fmean(r['diffusion'] for r in rows):>14.4f}")
    diff = [b["total"] - a["total"] for a, b in zip(results["off"], results["bf16"])]
    print(f"bf16 - fp32 per seed: {' '.join(f'{d:+.4f}' for d in diff)}")


if __name__ == "__main__":
    main()
