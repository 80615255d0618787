"""The U-Net's bf16 CPU attention before and after the bf16 softmax (issue 29), interleaved in one process.

    OMP_NUM_THREADS=1 python benchmarks/attention_softmax.py --threads 1 [--rounds 5]

``before``: training ran two bf16 matmuls around an fp32 softmax (an fp32 ``[N, N]`` copy and its cast
back), sampling ran SDPA's fused (flash) kernel on contiguous rows. ``after`` (the project's code): the
same two matmuls around a softmax that takes and returns bf16 (torch's CPU kernel accumulates in fp32),
for training and sampling alike. Rows, small config (32x32x3):

* ``attention train``: the attention core alone, [64, 256, 128] bf16, forward + backward;
* ``attention sample``: the same without gradients (flash before);
* ``unet train``: one bf16-autocast training pass of the small U-Net, batch 64 (a CBDM 2B pass of 32);
* ``unet sample``: one forward of the bf16 NHWC sampling copy (sampling/cpu_choice.py), 32 rows.

Prints process CPU ms per pass, median over the rounds, and before / after per round: median (min-max).
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

from cbdm_core.nets import unet as unet_mod
from cbdm_core.sampling.cpu_choice import sampling_network

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import CONFIGS, cpu_flags, cpu_model, make_unet  # noqa: E402

AFTER_MATMUL = unet_mod._matmul_attention
AFTER_FORWARD = unet_mod.SelfAttention.forward


def before_matmul(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The training attention before: the softmax in fp32, cast back to bf16."""
    q, k, v = q.squeeze(1), k.squeeze(1), v.squeeze(1)
    scores = torch.bmm(q * q.shape[-1] ** -0.5, k.transpose(1, 2))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    return torch.bmm(weights, v).unsqueeze(1)


def before_forward(self, x: torch.Tensor) -> torch.Tensor:
    """SelfAttention.forward before: bf16 without gradients took SDPA's flash kernel on contiguous rows."""
    b, c, h, w = x.shape
    n = self.group_norm(x)
    q, k, v = (p(n).flatten(2).transpose(1, 2).unsqueeze(1) for p in (self.proj_q, self.proj_k, self.proj_v))
    if unet_mod.cpu_low_precision(x) and torch.is_grad_enabled():
        out = before_matmul(q, k, v)
    else:
        if unet_mod.cpu_low_precision(x):
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = F.scaled_dot_product_attention(q, k, v)
    return x + self.proj(out.squeeze(1).transpose(1, 2).reshape(b, c, h, w))


def use(which: str) -> None:
    unet_mod._matmul_attention = before_matmul if which == "before" else AFTER_MATMUL
    unet_mod.SelfAttention.forward = before_forward if which == "before" else AFTER_FORWARD


def rows(batch: int) -> dict[str, Callable[[str], None]]:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2 * batch, 1, 256, 128, generator=g).bfloat16() * 2 for _ in range(3))
    grad = torch.randn(2 * batch, 1, 256, 128, generator=g).bfloat16()

    def attention_train(which: str) -> None:
        qi, ki, vi = (t.clone().requires_grad_(True) for t in (q, k, v))
        (before_matmul if which == "before" else AFTER_MATMUL)(qi, ki, vi).backward(grad)

    def attention_sample(which: str) -> None:
        with torch.no_grad():
            if which == "before":
                F.scaled_dot_product_attention(q[:batch].contiguous(), k[:batch].contiguous(), v[:batch].contiguous())
            else:
                AFTER_MATMUL(q[:batch], k[:batch], v[:batch])

    cfg = CONFIGS["small"]
    model = make_unet(cfg, torch.device("cpu"))
    x = torch.randn(2 * batch, 3, 32, 32, generator=g)
    t, y = torch.randint(0, 1000, (2 * batch,), generator=g), torch.randint(0, 101, (2 * batch,), generator=g)

    def unet_train(which: str) -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16):
            out = model(x, t, y)
        out.float().pow(2).mean().backward()

    xs = x[:batch]
    with torch.autocast("cpu", torch.bfloat16):
        copy = sampling_network(model.eval(), xs)  # the bf16 (NHWC) copy sampling runs on this CPU
    model.train()

    def unet_sample(which: str) -> None:
        with torch.no_grad():
            copy(xs, t[:batch], y[:batch])

    return {"attention train": attention_train, "attention sample": attention_sample, "unet train": unet_train,
            "unet sample": unet_sample}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=32, help="images per guided batch (passes run 2x this many rows)")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cases = rows(args.batch)
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, fn in cases.items():
            for which in (("before", "after") if r % 2 else ("after", "before")):
                use(which)
                c0 = time.process_time()
                fn(which)
                if r:
                    times.setdefault((name, which), []).append(time.process_time() - c0)
    use("after")
    print(f"bf16 attention before/after the bf16 softmax, {cpu_model()} ({cpu_flags()}), {args.threads} thread(s), "
          f"torch {torch.__version__}, {args.rounds} rounds, process CPU ms, median")
    print(f"{'row':<18} {'before ms':>10} {'after ms':>10} {'before/after':>14} {'(min-max)':>12}")
    for name in cases:
        b, a = times[(name, "before")], times[(name, "after")]
        ratios = [x / y for x, y in zip(b, a)]
        print(f"{name:<18} {statistics.median(b) * 1e3:>10.1f} {statistics.median(a) * 1e3:>10.1f} "
              f"{statistics.median(ratios):>13.2f}x {min(ratios):>5.2f}-{max(ratios):.2f}")


if __name__ == "__main__":
    main()
