"""Benchmark guided DDIM sampling: a reference-style two-pass loop vs this project's sampler.

    python benchmarks/sample.py --device cpu --config small            # few steps, small batch
    python benchmarks/sample.py --device cuda --config paper --json out.json   # DDIM-100, batch 256

Rows (same network and starting noise, one process):

* ``reference``: the original code's guided step written out here: fp32, one forward
  with y and a second with the null label, then the DDIM update.
* ``cbdm``: :func:`cbdm_core.sampling.sample` with ``guidance=w`` as ``cbdm sample``
  runs it (fp32; classifier-free guidance batches [y, null] into ONE forward).
* extra rows: the same call under bf16 autocast (and on CUDA channels_last +
  ``torch.compile``), which API users can wrap around ``sample``; ``cbdm sample`` does not.

Reported: images/s at the measured step count and the projected time for 50,000
samples with DDIM-100 (network time scales with the step count). The last line is
``speedup vs reference: X.XX`` for the ``cbdm`` row.

``--against diffusers`` measures the project's sampler against diffusers' own DDIM loop on
the same network instead (``benchmarks/sample_peer.py``; ``--quick`` for a 2-3 minute run):

    python benchmarks/sample.py --against diffusers --quick
    python benchmarks/sample.py --against diffusers --batches 64 250 --steps 100 --amp both
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from cbdm_core.sampling import sample
from cbdm_core.sampling.ddim import timestep_sequence
from cbdm_core.schedules import LinearSchedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import CONFIGS, T, make_unet, sync  # noqa: E402  (same networks as the step benchmark)

TOTAL = 50_000
FULL_STEPS = 100


@dataclass
class Row:
    name: str
    settings: str
    amp: bool = False
    compile: bool = False
    channels_last: bool = False
    seconds_per_batch: float = float("nan")
    images_per_sec: float = float("nan")
    projected_50k_hours: float = float("nan")
    mem_mib: Optional[float] = None


def reference_sample(model, schedule, x_T: torch.Tensor, y: torch.Tensor, steps: int, w: float) -> torch.Tensor:
    """Two network calls per step (conditional, then unconditional), fp32, DDIM eta = 0."""
    seq = timestep_sequence(schedule.num_timesteps, steps)
    ab_all = schedule.alphas_cumprod
    null = torch.full_like(y, model.num_classes)
    x = x_T
    with torch.no_grad():
        for i in reversed(range(len(seq))):
            t = x.new_ones([x.shape[0]], dtype=torch.long) * seq[i]
            ab = ab_all[seq[i]].item()
            ab_prev = ab_all[seq[i - 1]].item() if i > 0 else 1.0
            eps = model(x, t, y)
            eps_uncond = model(x, t, null)
            eps = eps + w * (eps - eps_uncond)
            x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
            x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
    return x


def build(row: Row, cfg: dict, device: torch.device, batch: int, steps: int, w: float) -> Callable[[], torch.Tensor]:
    model = make_unet(cfg, device).eval()
    schedule = LinearSchedule(T=T)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(batch, cfg["channels"], cfg["size"], cfg["size"], generator=g).to(device)
    y = torch.randint(0, cfg["classes"], (batch,), generator=g).to(device)
    if row.name == "reference":
        return lambda: reference_sample(model, schedule, x_T, y, steps, w)
    if row.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x_T = x_T.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if row.compile else model
    amp = (lambda: torch.autocast(device.type, torch.bfloat16)) if row.amp else contextlib.nullcontext

    def run() -> torch.Tensor:
        with amp():
            return sample(net, schedule, x_T, y, sampler="ddim", steps=steps, guidance=w)

    return run


def measure(rows: list[Row], cfg: dict, device: torch.device, args: argparse.Namespace) -> None:
    runs = {}
    for row in rows:
        print(f"building {row.name} ...", file=sys.stderr, flush=True)
        runs[row.name] = build(row, cfg, device, args.batch, args.steps, args.guidance)
        if args.warmup or row.compile:
            t0 = time.perf_counter()
            runs[row.name]()
            sync(device)
            print(f"  warm-up {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {r.name: [] for r in rows}
    for r in range(args.rounds):
        for row in rows:
            if device.type == "cuda":
                sync(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            t0 = time.perf_counter()
            runs[row.name]()
            sync(device)
            times[row.name].append(time.perf_counter() - t0)
            if device.type == "cuda":
                row.mem_mib = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()),
              file=sys.stderr, flush=True)
    for row in rows:
        row.seconds_per_batch = statistics.median(times[row.name])
        row.images_per_sec = args.batch / row.seconds_per_batch
        per_image_full = row.seconds_per_batch / args.batch * FULL_STEPS / args.steps
        row.projected_50k_hours = TOTAL * per_image_full / 3600


def table(rows: list[Row]) -> str:
    ref = rows[0]
    head = f"{'sampler':<18} {'settings':<40} {'s/batch':>9} {'img/s':>9} {'vs ref':>7} {'50k DDIM-100':>13} {'mem MiB':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        mem = "n/a" if r.mem_mib is None else f"{r.mem_mib:.0f}"
        lines.append(f"{r.name:<18} {r.settings:<40} {r.seconds_per_batch:>9.2f} {r.images_per_sec:>9.2f} "
                     f"{r.images_per_sec / ref.images_per_sec:>6.2f}x {r.projected_50k_hours:>11.2f} h {mem:>8}")
    return "\n".join(lines)


def peer_main(args: argparse.Namespace) -> None:
    """``--against diffusers``: fill in the peer defaults (``--quick``: small and short) and run it."""
    from sample_peer import run_against_diffusers

    if args.quick:
        args.batches = args.batches or [16]
        args.steps = args.steps or 10
        args.rounds = min(args.rounds, 3)
    args.batches = args.batches or [64, 250]
    args.steps = args.steps or FULL_STEPS
    args.amp = args.amp or "off"
    run_against_diffusers(args)


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", choices=["diffusers"], help="compare with diffusers' DDIM loop (sample_peer.py)")
    p.add_argument("--quick", action="store_true", help="with --against: batch 16, 10 steps, 3 rounds (about 2 min at 1 thread, quiet)")
    p.add_argument("--batches", type=int, nargs="+", help="with --against: batch sizes (default 64 250)")
    p.add_argument("--amp", choices=["off", "bf16", "both"], help="with --against: precision rows (default off)")
    p.add_argument("--run", help="with --against: a run folder whose EMA U-Net is sampled")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--config", choices=sorted(CONFIGS), default="small")
    p.add_argument("--batch", type=int, help="images per batch (default cuda 256, cpu 16)")
    p.add_argument("--steps", type=int, help="DDIM steps measured (default cuda 100, cpu 10)")
    p.add_argument("--guidance", type=float, default=1.0, help="guidance strength w (> 0: guided)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed batches per row (compiled rows: always 1)")
    p.add_argument("--variants", choices=["default", "none"], default="default")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.against:
        return peer_main(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU is available")
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    args.batch = args.batch or (256 if cuda else 16)
    args.steps = args.steps or (FULL_STEPS if cuda else 10)
    if args.guidance <= 0:
        sys.exit("--guidance must be > 0 (the benchmark is about guided sampling)")
    cfg = CONFIGS[args.config]

    rows = [Row("reference", "fp32, 2 forwards per step"), Row("cbdm", "fp32, one 2B forward per step")]
    if args.variants == "default":
        rows.append(Row("cbdm bf16", "bf16 autocast, one 2B forward", amp=True))
        if cuda:
            rows.append(Row("cbdm bf16+compile", "bf16, channels_last, compiled", amp=True, compile=True,
                            channels_last=True))
    measure(rows, cfg, device, args)

    machine = torch.cuda.get_device_name(device) if cuda else \
        f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, {args.threads} threads"
    print(f"guided DDIM sampling (w={args.guidance}), config {args.config}, batch {args.batch}, "
          f"{args.steps} steps measured, {machine}, torch {torch.__version__}, median of {args.rounds}")
    print(table(rows))
    speedup = rows[1].images_per_sec / rows[0].images_per_sec
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "sample", "config": args.config, "batch": args.batch, "steps": args.steps,
            "guidance": args.guidance, "device": machine, "torch": torch.__version__,
            "date": _dt.datetime.now().isoformat(timespec="seconds"), "rows": [asdict(r) for r in rows],
            "speedup_vs_reference": speedup}, indent=2))
    print(f"speedup vs reference: {speedup:.2f}")


if __name__ == "__main__":
    main()
