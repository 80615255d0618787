"""How fast one CPU core runs the small U-Net's 3x3 convolutions: GFLOP/s per dtype and layout (issue 29).

    OMP_NUM_THREADS=1 python benchmarks/conv_peak.py [--threads 1] [--rounds 7] [--config small|digits] [--rows N]

The two largest convolutions of the ``small`` config's CBDM 2B pass (batch 32 -> 64 rows): 64 -> 64
channels at 32x32 and 128 -> 128 at 16x16, fp32 and bf16, NCHW and NHWC; forward alone and forward +
backward (input and weight gradients: 3x the forward's FLOPs). ``--config digits``: the studies' network
(32 channels at 8x8 and 64 at 4x4; a guided sampling batch of 250 images is 500 rows). Process CPU time, median of the rounds.
Compare the GFLOP/s with the core's peak (fp32 FMA or bf16 dot-product throughput x clock) to see how
much of a step's convolution time any other choice could still win.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import cpu_flags, cpu_model  # noqa: E402


# (channels, height = width) of each config's two largest 3x3 convolutions (in = out channels)
SHAPES = {"small": ((64, 32), (128, 16)), "digits": ((32, 8), (64, 4))}


def timed(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        c0 = time.process_time()
        fn()
        times.append(time.process_time() - c0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--config", choices=sorted(SHAPES), default="small")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"3x3 convolutions, {args.rows} rows, {cpu_model()} ({cpu_flags()}), {args.threads} thread(s), "
          f"torch {torch.__version__}, process CPU time, median of {args.rounds}")
    print(f"{'shape':<16} {'dtype':<6} {'layout':<6} {'fwd ms':>8} {'fwd GFLOP/s':>12} {'fwd+bwd ms':>11} "
          f"{'fwd+bwd GFLOP/s':>16}")
    for c, hw in SHAPES[args.config]:
        flops = 2 * args.rows * hw * hw * c * c * 9
        for dtype in (torch.float32, torch.bfloat16):
            for nhwc in (False, True):
                fmt = torch.channels_last if nhwc else torch.contiguous_format
                x = torch.randn(args.rows, c, hw, hw, dtype=dtype).contiguous(memory_format=fmt).requires_grad_(True)
                w = torch.randn(c, c, 3, 3, dtype=dtype).contiguous(memory_format=fmt).requires_grad_(True)
                g = torch.randn(args.rows, c, hw, hw, dtype=dtype).contiguous(memory_format=fmt)

                def forward() -> None:
                    with torch.no_grad():
                        F.conv2d(x, w, padding=1)

                def train() -> None:
                    x.grad = w.grad = None
                    F.conv2d(x, w, padding=1).backward(g)

                f, t = timed(forward, args.rounds), timed(train, args.rounds)
                print(f"{f'{c}ch {hw}x{hw}':<16} {str(dtype).split('.')[-1]:<6} {'NHWC' if nhwc else 'NCHW':<6} "
                      f"{f * 1e3:>8.1f} {flops / f / 1e9:>12.0f} {t * 1e3:>11.1f} {3 * flops / t / 1e9:>16.0f}")


if __name__ == "__main__":
    main()
