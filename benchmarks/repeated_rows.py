"""CBDM's y' rows with y' = y left out of the CPU pass (a network without random layers) vs kept.

    OMP_NUM_THREADS=1 python benchmarks/repeated_rows.py --config digits --threads 1 --rounds 15

With no active dropout, a y' row whose label equals the main row's predicts what the main row
does, so both CBDM terms are 0 there with 0 gradient (cbdm_core/nets/row_behaviour.py): the
trainer's CPU pass leaves it out, as it leaves out rows with a dropped label or t = 0. On
long-tailed labels with y' drawn from the training frequencies that is sum_c p_c^2 of the y'
rows (about 0.25 for 10 classes at imbalance 0.01, 0.02 for 100). Rows: the objective's shared
pass and backward (fp32 or bf16 autocast) of one batch of the config, the same draws in both
rows of a round, interleaved; process CPU ms per step, median. ``kept`` is the same method with
``ctx.repeatable`` forced False (the behaviour before). ``--dropout`` overrides the config's
(with dropout > 0 both rows run the same rows).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

from cbdm_core.methods.cbdm import CBDMRegularizer
from cbdm_core.nets.unet import UNet, UNetOptions
from cbdm_core.objectives import DiffusionObjective
from cbdm_core.schedules import LinearSchedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import CONFIGS, cpu_flags, cpu_model, long_tail_probs, make_batch  # noqa: E402


@dataclasses.dataclass
class KeepsRepeatedRows(CBDMRegularizer):
    """CBDM as it was before y' = y rows were left out: the repeat is never assumed."""

    def extra_rows_read(self, ctx, extra):
        return super().extra_rows_read(dataclasses.replace(ctx, repeatable=False), extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="digits")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per row and round")
    ap.add_argument("--amp", choices=["off", "bf16"], default="off")
    ap.add_argument("--dropout", type=float, default=None, help="override the config's network dropout")
    args = ap.parse_args()
    if args.rounds < 1 or args.steps < 1 or args.threads < 1:
        sys.exit("--rounds, --steps and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    cfg = CONFIGS[args.config]
    unet = dict(cfg["unet"], **({} if args.dropout is None else {"dropout": args.dropout}))
    net = UNet(UNetOptions(**unet), image_size=cfg["size"], channels=cfg["channels"], num_classes=cfg["classes"])
    probs = long_tail_probs(cfg["classes"])
    schedule = LinearSchedule(T=1000)
    x0, y = make_batch(cfg, torch.device("cpu"), cfg["batch"])
    rows = {}
    for name, method in (("kept", KeepsRepeatedRows(probs=probs)), ("left out", CBDMRegularizer(probs=probs))):
        objective = DiffusionObjective(schedule, cfg["classes"], [method], skip_unread_rows=True)
        rows[name] = objective

    def step(objective: DiffusionObjective) -> None:
        amp = torch.autocast("cpu", torch.bfloat16) if args.amp == "bf16" else contextlib.nullcontext()
        with amp:
            out = objective(net, x0, y)
        out.total.backward()
        net.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {k: [] for k in rows}
    for r in range(args.rounds):
        for name, objective in rows.items():
            torch.manual_seed(r)  # the same t, noise, label dropout and y' draws in both rows
            step(objective)
            start = time.process_time()
            for _ in range(args.steps):
                step(objective)
            times[name].append((time.process_time() - start) / args.steps * 1e3)
    share = float((probs / probs.sum()).pow(2).sum())
    print(f"repeated y' rows, config {args.config} (batch {cfg['batch']}, dropout {unet['dropout']}), "
          f"{cpu_model()} ({cpu_flags()}), {args.threads} thread(s), amp {args.amp}, torch {torch.__version__}, "
          f"{args.rounds} rounds x {args.steps} steps; P(y' = y) = {share:.3f}")
    kept, left = statistics.median(times["kept"]), statistics.median(times["left out"])
    ratios = [a / b for a, b in zip(times["kept"], times["left out"])]
    print(f"{'rows':<10} {'cpu ms/step':>12}")
    print(f"{'kept':<10} {kept:>12.1f}")
    print(f"{'left out':<10} {left:>12.1f}")
    print(f"kept / left out: {kept / left:.3f} (per round {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
