"""The sampling network's forward on the CPU, per candidate of the sampling choice (issue 29).

    OMP_NUM_THREADS=1 python benchmarks/sampling_forward.py --threads 1 [--rows 32] [--rounds 5] [--compile]
        [--config small|digits|paper]

One forward of the ``small`` U-Net (``--config digits``: the studies' network on 8x8 digits; weights
redrawn so eps is O(1)) over ``--rows`` rows (a guided batch of B images is 2B rows), no autograd, in
one process; the variants are interleaved in rounds (order alternating) and timed in process CPU time,
the robust figure at one thread on a shared machine. Rows:

* ``fp32 as given`` / ``bf16 autocast as given``: the network as the sampler ran it before
  ``cbdm_core/sampling/cpu_choice.py`` (fp32; and under CPU bf16 autocast);
* ``fp32 NHWC``: the prepared fp32 copy in channels_last;
* ``bf16 copy`` (NCHW) and ``bf16 copy NHWC``: the prepared bf16 copy (GroupNorm in fp32);
* ``bf16 copy NHWC, bf16 GroupNorm``: the same with torch's own bf16 GroupNorm (no fp32 norms);
* with ``--compile``: the fp32 NHWC and bf16 NHWC copies under ``torch.compile`` (inductor, freezing);
  the compile's CPU and wall seconds are printed separately, not counted in the table.

Printed: CPU s per forward (median), the ratio to ``fp32 as given`` and to ``bf16 autocast as given``,
and the max |difference| relative to max |fp32 as given| of each variant's eps.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from cbdm_core.sampling.cpu_choice import SamplingChoice, prepare_network

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sample_peer import lively  # noqa: E402
from train_step import CONFIGS, cpu_flags, cpu_model, make_unet  # noqa: E402

NHWC = SamplingChoice(fp32_channels_last=True, bf16_weights=True, bf16_channels_last=True, compile=False,
                      evidence="")
NCHW = SamplingChoice(fp32_channels_last=False, bf16_weights=True, bf16_channels_last=False, compile=False,
                      evidence="")


def _bf16_norms(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """A bf16 NHWC copy with torch's bf16 GroupNorm (everything bf16), for comparison."""
    net = copy.deepcopy(model).to(torch.bfloat16).to(memory_format=torch.channels_last)

    def run(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return net(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last), t, y).float()

    return run


def variants(model: torch.nn.Module, args: argparse.Namespace, x, t, y) -> dict[str, tuple[Callable, bool]]:
    """name -> (network, runs under bf16 autocast)."""
    rows = {"fp32 as given": (model, False), "bf16 autocast as given": (model, True),
            "fp32 NHWC": (prepare_network(model, "fp32", NHWC), False),
            "bf16 copy": (prepare_network(model, "bf16", NCHW), False),
            "bf16 copy NHWC": (prepare_network(model, "bf16", NHWC), False),
            "bf16 copy NHWC, bf16 GroupNorm": (_bf16_norms(model), False)}
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = SamplingChoice(True, True, True, True, "")
        for mode in ("fp32", "bf16"):
            net = prepare_network(model, mode, compiled)
            c0, w0 = time.process_time(), time.perf_counter()
            with torch.no_grad():
                net(x, t, y)
            print(f"compile {mode} NHWC: {time.process_time() - c0:.1f} s CPU, {time.perf_counter() - w0:.1f} s wall",
                  flush=True)
            rows[f"{mode} NHWC compiled"] = (net, False)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--config", choices=sorted(CONFIGS), default="small")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = CONFIGS[args.config]
    model = lively(make_unet(cfg, torch.device("cpu"))).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.rows, cfg["channels"], cfg["size"], cfg["size"], generator=g)
    t = torch.randint(0, 1000, (args.rows,), generator=g)
    y = torch.randint(0, cfg["classes"] + 1, (args.rows,), generator=g)
    print(f"{args.config} U-Net forward, {args.rows} rows, {cpu_model()} ({cpu_flags()}), {os.cpu_count()} cores, "
          f"{args.threads} threads, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}, "
          f"median of {args.rounds} interleaved rounds", flush=True)
    rows = variants(model, args, x, t, y)

    def run(name: str) -> torch.Tensor:
        net, amp = rows[name]
        with torch.no_grad(), (torch.autocast("cpu", torch.bfloat16) if amp else contextlib.nullcontext()):
            return net(x, t, y).float()

    ref = run("fp32 as given")
    diff = {n: ((run(n) - ref).abs().max() / ref.abs().max()).item() for n in rows}  # also the warm-up
    cpu: dict[str, list[float]] = {n: [] for n in rows}
    for r in range(args.rounds):
        for name in (list(rows) if r % 2 == 0 else list(rows)[::-1]):
            c0 = time.process_time()
            run(name)
            cpu[name].append(time.process_time() - c0)
    fp32, amp = statistics.median(cpu["fp32 as given"]), statistics.median(cpu["bf16 autocast as given"])
    print(f"{'variant':<32} {'CPU s':>7} {'vs fp32 as given':>17} {'vs bf16 as given':>17} {'rel. diff':>10}")
    for name in rows:
        m = statistics.median(cpu[name])
        print(f"{name:<32} {m:>7.3f} {fp32 / m:>16.2f}x {amp / m:>16.2f}x {diff[name]:>10.1e}")


if __name__ == "__main__":
    main()
