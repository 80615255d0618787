"""A Winograd F(2x2, 3x3) convolution written in torch ops vs torch's (oneDNN's) direct 3x3 convolution.

    OMP_NUM_THREADS=2 python benchmarks/winograd_conv.py --threads 2 --rounds 7

Issue 29's fp32 target is bounded by convolutions at the core's fp32 peak. Winograd's
F(2x2, 3x3) computes a 3x3 convolution with 2.25x fewer multiplications (16 instead of 36 per
2x2 output tile and channel pair), at the cost of transforming input tiles, weights and output
tiles; oneDNN in torch 2.x offers no Winograd path on the CPU. This measures whether the
transforms, written as torch ops over strided views (no custom kernel), leave any of that gain:
forward only, the `small` config's shapes (a CBDM 2B pass of batch 32 minus the skipped rows:
61 rows), interleaved rounds, wall ms, median; and the largest deviation from ``F.conv2d``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import cpu_flags, cpu_model  # noqa: E402

# F(2x2, 3x3) (Lavin & Gray, 2016): Y = A^T [ (G g G^T) * (B^T d B) ] A
_G = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]]


def winograd_weight(w: torch.Tensor) -> torch.Tensor:
    """``[K, C, 3, 3]`` -> the transformed weights ``[16, K, C]``."""
    g = torch.tensor(_G, dtype=w.dtype)
    return torch.einsum("ai,kcij,bj->abkc", g, w, g).reshape(16, w.shape[0], w.shape[1])


def _tile_transform(rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """B^T applied along one axis to four strided views d0..d3."""
    d0, d1, d2, d3 = rows
    return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def winograd_conv(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """3x3 convolution, stride 1, padding 1, of ``x [N, C, H, W]`` (H, W even) with ``u`` from
    :func:`winograd_weight`."""
    n, c, h, w = x.shape
    k = u.shape[1]
    th, tw = h // 2, w // 2
    xp = F.pad(x, (1, 1, 1, 1))
    t = torch.stack(_tile_transform([xp[:, :, i:i + 2 * th:2, :] for i in range(4)]))  # [4, N, C, th, W+2]
    v = torch.stack(_tile_transform([t[..., j:j + 2 * tw:2] for j in range(4)]), 1)  # [4, 4, N, C, th, tw]
    m = torch.matmul(u.unsqueeze(1), v.reshape(16, n, c, th * tw)).view(4, 4, n, k, th, tw)
    # A^T along the first tile axis, then the second; the 2x2 outputs interleave into the image.
    r0, r1 = m[0] + m[1] + m[2], m[1] - m[2] - m[3]
    out = torch.stack([torch.stack([r[0] + r[1] + r[2], r[1] - r[2] - r[3]], -1) for r in (r0, r1)], 3)
    return out.reshape(n, k, h, w)


def _mean_ms(fn: Callable[[], object], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--rows", type=int, default=61)
    args = ap.parse_args()
    if min(args.threads, args.rounds, args.rows) < 1:
        sys.exit("--threads, --rounds and --rows must be at least 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"Winograd F(2x2,3x3) in torch ops vs F.conv2d, {cpu_model()} ({cpu_flags()}), {args.threads} thread(s), "
          f"torch {torch.__version__}, fp32, forward, {args.rounds} rounds, wall ms, median")
    print(f"{'shape':<16} {'NCHW ms':>8} {'NHWC ms':>8} {'GFLOP/s':>8} {'winograd ms':>12} {'vs best':>8} "
          f"{'max dev':>8}")
    for c, hw in ((64, 32), (128, 16), (128, 8)):
        x = torch.randn(args.rows, c, hw, hw)
        w = torch.randn(c, c, 3, 3) * (2.0 / (9 * c)) ** 0.5
        u = winograd_weight(w)
        x_nhwc = x.contiguous(memory_format=torch.channels_last)
        rows = {"nchw": lambda: F.conv2d(x, w, padding=1), "nhwc": lambda: F.conv2d(x_nhwc, w, padding=1),
                "winograd": lambda: winograd_conv(x, u)}
        times: dict[str, list[float]] = {k: [] for k in rows}
        for fn in rows.values():
            fn()
        for _ in range(args.rounds):
            for name, fn in rows.items():
                times[name].append(_mean_ms(fn, 3))
        med = {k: statistics.median(v) for k, v in times.items()}
        dev = (winograd_conv(x, u) - F.conv2d(x, w, padding=1)).abs().max().item()
        flops = 2 * args.rows * hw * hw * c * c * 9 / 1e9
        best = min(med["nchw"], med["nhwc"])
        print(f"{f'{c}ch {hw}x{hw}':<16} {med['nchw']:>8.1f} {med['nhwc']:>8.1f} {flops / best * 1e3:>8.0f} "
              f"{med['winograd']:>12.1f} {best / med['winograd']:>7.2f}x {dev:>8.1e}")


if __name__ == "__main__":
    main()
