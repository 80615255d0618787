"""Forward+backward of the CBDM views: one 2B pass (joint) vs two B passes (split).

    OMP_NUM_THREADS=1 python benchmarks/pass_layout.py --threads 1 \
        --variants joint:fp32,split:fp32,joint:bf16,split:bf16 [--keep-host-memory] [--profile]

Times only the network (no optimizer, EMA or loss bookkeeping) on the ``small`` config,
dropout 0, so the layouts do the same arithmetic. Variants are ``layout:amp[:cl]``
(``cl`` = channels_last). Rows are interleaved in rounds; the median and minimum are
printed with the process CPU time (user + system: robust to other jobs on a shared
machine at one thread), the minor page faults and system time per pass (``getrusage``), which is
how the 2B pass was found to lose to two B passes when glibc returns freed memory to the
kernel. ``--profile`` adds a per-op ``torch.profiler`` table for each variant.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import CONFIGS, make_batch, make_unet  # noqa: E402

from cbdm_core.host_memory import keep_freed_host_memory  # noqa: E402
from cbdm_core.training.precision import cpu_bf16_support  # noqa: E402


def make_pass(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, layout: str, amp: str):
    """One forward+backward over two views of ``x`` in the given layout."""
    ctx = (lambda: torch.autocast("cpu", torch.bfloat16)) if amp == "bf16" else (
        lambda: torch.autocast("cpu", enabled=False))

    def run() -> None:
        with ctx():
            if layout == "joint":
                out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y])).float()
                loss = out.square().mean()
            else:
                loss = model(x, t, y).float().square().mean() + model(x, t, y).float().square().mean()
        loss.backward()

    return run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="small")
    p.add_argument("--batch", type=int, help="B, rows per view (default: the config's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default="joint:fp32,split:fp32,joint:bf16,split:bf16")
    p.add_argument("--keep-host-memory", action="store_true", help="configure malloc as the CPU trainer does")
    p.add_argument("--profile", action="store_true", help="print a per-op profile of each variant")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.keep_host_memory and not keep_freed_host_memory():
        sys.exit("--keep-host-memory: not available on this platform")
    cfg = CONFIGS[args.config]
    batch = args.batch or cfg["batch"]
    x, y = make_batch(cfg, torch.device("cpu"), batch)
    t = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(0))
    runs = {}
    for spec in args.variants.split(","):
        layout, amp, *rest = spec.split(":")
        model = make_unet(cfg, torch.device("cpu"))
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        xin = x
        if rest and rest[0] == "cl":
            model = model.to(memory_format=torch.channels_last)
            xin = x.contiguous(memory_format=torch.channels_last)
        runs[spec] = make_pass(model, xin, t, y, layout, amp)
        runs[spec]()  # warm-up: oneDNN primitive cache, allocator
    stats: dict[str, list[tuple[float, int, float, float]]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for name, run in runs.items():
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            run()
            dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
            cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
            stats[name].append((dt, r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime, cpu))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1][0]:.2f}s" for k, v in stats.items()), file=sys.stderr)
    print(f"fwd+bwd of 2 views x {batch} rows, config {args.config}, {args.threads} threads, cpu bf16: "
          f"{cpu_bf16_support() or 'none'}, keep host memory: {args.keep_host_memory}, torch {torch.__version__}")
    print(f"{'variant':<22} {'median s':>9} {'min s':>7} {'cpu s':>7} {'faults':>8} {'sys s':>6}")
    for name, rows in stats.items():
        print(f"{name:<22} {statistics.median(r[0] for r in rows):>9.2f} {min(r[0] for r in rows):>7.2f} "
              f"{statistics.median(r[3] for r in rows):>7.2f} {int(statistics.median(r[1] for r in rows)):>8d} "
              f"{statistics.median(r[2] for r in rows):>6.2f}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, run in runs.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                run()
            print(f"== {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
