"""The U-Net's attention layout on the CPU: contiguous q/k/v (SDPA's fused kernel; what bf16 sampling
ran until the bf16 matmul attention, benchmarks/attention_softmax.py) vs the strided views (the math path;
fp32 training and sampling), whole-network forward, interleaved.

    OMP_NUM_THREADS=1 python benchmarks/attention_layout.py --threads 1 [--rows 128] [--rounds 3]

Prints the process CPU time and wall time per forward of each layout and precision and the
per-round ratio strided / contiguous (> 1: the inference layout is faster), median (min-max).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cbdm_core.nets import unet as unet_mod

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import CONFIGS, cpu_flags, cpu_model, make_unet  # noqa: E402


def strided_forward(self, x: torch.Tensor) -> torch.Tensor:
    """SelfAttention.forward as training runs it (strided q/k/v: SDPA's math path on the CPU)."""
    b, c, h, w = x.shape
    n = self.group_norm(x)
    q, k, v = (p(n).flatten(2).transpose(1, 2).unsqueeze(1) for p in (self.proj_q, self.proj_k, self.proj_v))
    out = F.scaled_dot_product_attention(q, k, v)
    return x + self.proj(out.squeeze(1).transpose(1, 2).reshape(b, c, h, w))


def contiguous_forward(self, x: torch.Tensor) -> torch.Tensor:
    """The same with contiguous q/k/v (SDPA's fused kernel on the CPU): what bf16 sampling ran before."""
    b, c, h, w = x.shape
    n = self.group_norm(x)
    q, k, v = (p(n).flatten(2).transpose(1, 2).unsqueeze(1).contiguous()
               for p in (self.proj_q, self.proj_k, self.proj_v))
    out = F.scaled_dot_product_attention(q, k, v)
    return x + self.proj(out.squeeze(1).transpose(1, 2).reshape(b, c, h, w))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=128, help="rows per forward (a guided batch of 64 = 128)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = make_unet(CONFIGS["small"], torch.device("cpu")).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.rows, 3, 32, 32, generator=g)
    t, y = torch.randint(0, 1000, (args.rows,), generator=g), torch.randint(0, 101, (args.rows,), generator=g)
    original = unet_mod.SelfAttention.forward
    print(f"{cpu_model()} ({cpu_flags()}), {args.threads} threads, small U-Net forward of {args.rows} rows, no_grad")
    for amp in (False, True):
        ctx = (lambda: torch.autocast("cpu", torch.bfloat16)) if amp else contextlib.nullcontext
        times = {"strided": [], "contiguous": []}
        walls = {"strided": [], "contiguous": []}
        for r in range(args.rounds + 1):  # round 0 warms up
            for name, fwd in (("strided", strided_forward), ("contiguous", contiguous_forward))[:: 1 if r % 2 else -1]:
                unet_mod.SelfAttention.forward = fwd
                c0, w0 = time.process_time(), time.perf_counter()
                with torch.no_grad(), ctx():
                    model(x, t, y)
                if r:
                    times[name].append(time.process_time() - c0)
                    walls[name].append(time.perf_counter() - w0)
        unet_mod.SelfAttention.forward = original
        ratios = [a / b for a, b in zip(times["strided"], times["contiguous"])]
        print(f"{'bf16' if amp else 'fp32'}: CPU s strided {statistics.median(times['strided']):.2f}, contiguous "
              f"{statistics.median(times['contiguous']):.2f} (wall {statistics.median(walls['strided']):.2f} / "
              f"{statistics.median(walls['contiguous']):.2f}); strided/contiguous {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
