"""Attention path per backbone and precision on the CPU: SDPA vs explicit matmuls (cbdm_core/nets/attention_path.py).

    OMP_NUM_THREADS=1 python benchmarks/attention_path.py --threads 1 [--batch 32] [--rounds 3]

For the U-Net (`small` config), the DiT-style ViT (`small`, patch 4) and GenViT (the CIFAR
configuration), 32x32x3 inputs: one training pass (forward + backward) and one sampling forward, in fp32
and under bf16 autocast, each with attention through ``scaled_dot_product_attention`` ("sdpa") and
through explicit matmuls ("matmul"), rows interleaved in rounds. Prints the process CPU time per pass
and sdpa / matmul (> 1: matmuls faster), median over the rounds. The project's choice is matmul for bf16
and sdpa for fp32 (the ``chosen`` column). The U-Net's sampling forward is left out: its layouts are
``attention_layout.py``'s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from cbdm_core.nets import attention_path, genvit, unet, vit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import CONFIGS, cpu_flags, cpu_model, make_unet  # noqa: E402


def _set_path(path: str) -> None:
    """Route every backbone's attention through SDPA (``sdpa``), explicit matmuls (``matmul``), or the
    project's choice (``auto``). The U-Net's training pass only: its sampling forward is attention_layout.py's."""
    if path == "auto":
        unet.cpu_low_precision = attention_path.cpu_low_precision
        vit.pick_timm_attention = genvit.pick_timm_attention = attention_path.pick_timm_attention
        return
    matmul = path == "matmul"

    def pick(attn: torch.nn.Module, x: torch.Tensor) -> None:
        attn.fused_attn = not matmul

    unet.cpu_low_precision = lambda x: matmul
    vit.pick_timm_attention = genvit.pick_timm_attention = pick


def networks(classes: int = 10) -> dict[str, torch.nn.Module]:
    return {
        "unet small": make_unet(CONFIGS["small"], torch.device("cpu")),
        "vit small p4": vit.build_vit(vit.ViTOptions(size="small", patch_size=4), image_size=32, channels=3,
                                      num_classes=classes),
        "genvit cifar": genvit.build_genvit(genvit.GenViTOptions(), image_size=32, channels=3, num_classes=classes),
    }


def one_pass(model: torch.nn.Module, batch: tuple, bf16: bool, train: bool) -> None:
    x, t, y = batch
    with torch.set_grad_enabled(train), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        out = model(x, t, y)
    if train:
        out.float().pow(2).mean().backward()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(0, 1000, (args.batch,), generator=g),
             torch.randint(0, 10, (args.batch,), generator=g))
    rows = [(name, model, bf16, train) for name, model in networks().items() for bf16 in (False, True)
            for train in (True, False) if not (name.startswith("unet") and not train)]
    times: dict[tuple, list[float]] = {}
    for r in range(args.rounds + 1):  # round 0 warms up (oneDNN primitives, allocator)
        for name, model, bf16, train in rows:
            for path in ("sdpa", "matmul"):
                _set_path(path)
                c0 = time.process_time()
                one_pass(model, batch, bf16, train)
                if r:
                    times.setdefault((name, bf16, train, path), []).append(time.process_time() - c0)
    _set_path("auto")
    print(f"attention path, batch {args.batch}, {cpu_model()} ({cpu_flags()}), {args.threads} thread(s), "
          f"torch {torch.__version__}, {args.rounds} rounds, median process CPU time")
    print(f"{'network':<14} {'precision':<9} {'pass':<8} {'sdpa ms':>9} {'matmul ms':>10} {'sdpa/matmul':>12} {'chosen':>7}")
    for name, _, bf16, train in rows:
        sdpa, mm = (statistics.median(times[(name, bf16, train, k)]) * 1e3 for k in ("sdpa", "matmul"))
        print(f"{name:<14} {'bf16' if bf16 else 'fp32':<9} {'train' if train else 'sample':<8} {sdpa:>9.0f} "
              f"{mm:>10.0f} {sdpa / mm:>11.2f}x {'matmul' if bf16 else 'sdpa':>7}")


if __name__ == "__main__":
    main()
