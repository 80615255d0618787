"""Dropout on the CPU: torch's mask (``bernoulli_``) vs masks from 64-bit random words (cbdm_core/nets/dropout.py).

    python benchmarks/dropout_masks.py [--rounds 11] [--shape 64 64 32 32] [--p 0.1]

One fp32 activation of the small config's first level (a CBDM 2B pass of batch 32: 64 x 64 x 32 x 32,
4.2M elements), at 1 and at 2 threads: the mask alone (``bernoulli_`` vs the words' ``random_``), and
dropout forward + backward (``F.dropout`` vs :func:`cbdm_core.nets.dropout.dropout` with ``words``).
Rows interleaved in rounds; wall ms, median; torch / words per round, median (min-max).
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

from cbdm_core.nets.dropout import dropout, kept_units

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import cpu_flags, cpu_model  # noqa: E402


def cases(x: torch.Tensor, p: float) -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    grad = torch.randn_like(x)
    xg = x.clone().requires_grad_(True)

    def torch_mask() -> None:
        torch.empty_like(x).bernoulli_(1 - p)

    def word_mask() -> None:
        torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)

    def torch_dropout() -> None:
        xg.grad = None
        F.dropout(xg, p, True).backward(grad)

    def word_dropout() -> None:
        xg.grad = None
        dropout(xg, p, True, "words").backward(grad)

    return {"random draws only": (torch_mask, word_mask), "dropout fwd + bwd": (torch_dropout, word_dropout)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--shape", type=int, nargs="+", default=[64, 64, 32, 32])
    ap.add_argument("--p", type=float, default=0.1)
    args = ap.parse_args()
    x = torch.randn(*args.shape)
    print(f"dropout masks, {cpu_model()} ({cpu_flags()}), torch {torch.__version__}, shape {tuple(args.shape)} "
          f"({x.numel() / 1e6:.1f}M elements), p {args.p} (words: {65536 - kept_units(args.p)}/65536 dropped), "
          f"{args.rounds} rounds, wall ms, median")
    print(f"{'threads':>7} {'what':<20} {'torch ms':>9} {'words ms':>9} {'torch/words':>12} {'(min-max)':>11}")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, (a, b) in cases(x, args.p).items():
            times: dict[str, list[float]] = {"torch": [], "words": []}
            for r in range(args.rounds + 1):  # round 0 warms up
                for label, fn in ((("torch", a), ("words", b)) if r % 2 else (("words", b), ("torch", a))):
                    t0 = time.perf_counter()
                    fn()
                    if r:
                        times[label].append(time.perf_counter() - t0)
            ratios = [u / v for u, v in zip(times["torch"], times["words"])]
            print(f"{threads:>7} {name:<20} {statistics.median(times['torch']) * 1e3:>9.1f} "
                  f"{statistics.median(times['words']) * 1e3:>9.1f} {statistics.median(ratios):>11.2f}x "
                  f"{min(ratios):>5.2f}-{max(ratios):.2f}")


if __name__ == "__main__":
    main()
