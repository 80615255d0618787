"""Guided DDIM throughput of this project's sampler vs diffusers' DDIM loop on the same network.

Run through ``benchmarks/sample.py --against diffusers`` (``--quick`` for a 2-3 minute check):

    python benchmarks/sample.py --against diffusers --quick
    python benchmarks/sample.py --against diffusers --batches 64 250 --steps 100 --rounds 3
    python benchmarks/sample.py --against diffusers --run runs/qs     # a trained run's EMA weights

Rows, per batch size (same weights, same starting noise, same labels, one process):

* ``diffusers``: diffusers' ``UNet2DModel`` built from the project's weights by the exporter's
  own mapping (``cbdm_core/exporters/unet_mapping.py``) and ``DDIMScheduler`` (the run's betas,
  ``leading`` spacing, ``set_alpha_to_one``, eta 0), looped as diffusers' own class-conditional
  pipelines loop: ONE batched forward over ``[x, x]`` with labels ``[y, null]`` per step
  (``torch.cat([latents] * 2)``, as ``DiTPipeline`` and the Stable Diffusion pipelines do),
  ``uncond + s * (cond - uncond)`` with ``s = 1 + w`` (the project's ``(1 + w) cond - w uncond``),
  then ``scheduler.step`` on the B latents.
* ``cbdm``: :func:`cbdm_core.sampling.sample` (``sampler="ddim"``, ``guidance=w``), as ``cbdm sample``
  calls it (one 2B forward per step through the ``cfg`` guidance).
* with ``--amp both|bf16``: the same two loops under CPU/CUDA bf16 autocast.

Timing interleaves the rows in rounds; every round gives a cbdm/diffusers ratio and the
table reports the median ratio and the min-max spread over rounds (robust on a shared
machine, where absolute images/s are not). ``rel. diff`` (max |cbdm - diffusers| / max |diffusers|) compares the cbdm and diffusers
outputs of the same precision on the same noise: both run the same eps network and the
same DDIM update, so only rounding separates them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from cbdm_core.exporters.unet_mapping import diffusers_config, to_diffusers
from cbdm_core.sampling import sample
from cbdm_core.schedules import LinearSchedule

from train_step import CONFIGS, T, cpu_model, make_unet, sync


@dataclass
class PeerRow:
    name: str  # "diffusers" or "cbdm"
    amp: bool
    batch: int
    times: list[float] = field(default_factory=list)
    out: Optional[torch.Tensor] = None

    @property
    def label(self) -> str:
        return f"{self.name} {'bf16' if self.amp else 'fp32'}"


def diffusers_unet(model: Any) -> Any:
    """diffusers' ``UNet2DModel`` holding ``model``'s weights (the exporter's mapping), eval mode."""
    from diffusers import UNet2DModel

    opts = model.options
    unet = UNet2DModel(**diffusers_config(opts, image_size=model.image_size, channels=model.channels,
                                          num_classes=model.num_classes))
    unet.load_state_dict(to_diffusers(model.state_dict(), opts), strict=True)
    return unet.to(next(model.parameters()).device).eval()


def diffusers_scheduler(schedule: Any) -> Any:
    """``DDIMScheduler`` with the schedule's own betas and the project's DDIM conventions."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=schedule.num_timesteps, trained_betas=schedule.betas.tolist(),
                         prediction_type="epsilon", clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                         timestep_spacing="leading")


@torch.no_grad()
def diffusers_ddim(unet: Any, scheduler: Any, x_T: torch.Tensor, y: torch.Tensor, null: int, steps: int,
                   w: float) -> torch.Tensor:
    """Class-conditional guided DDIM written the way diffusers' pipelines write it (one 2B pass)."""
    scheduler.set_timesteps(steps)
    latents = x_T * scheduler.init_noise_sigma
    labels = torch.cat([y, torch.full_like(y, null)])
    s = 1.0 + w
    for t in scheduler.timesteps:
        latent_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        eps = unet(latent_in, t.expand(latent_in.shape[0]).to(latents.device), class_labels=labels).sample
        cond, uncond = eps.chunk(2)
        eps = uncond + s * (cond - uncond)
        latents = scheduler.step(eps.to(latents.dtype), t, latents, eta=0.0).prev_sample
    return latents


def make_runs(model: Any, schedule: Any, x_T: torch.Tensor, y: torch.Tensor, steps: int,
              w: float) -> dict[str, Callable[[], torch.Tensor]]:
    """The two loops as zero-argument callables over the same weights, noise and labels."""
    unet, scheduler = diffusers_unet(model), diffusers_scheduler(schedule)
    null = int(model.num_classes)
    return {"diffusers": lambda: diffusers_ddim(unet, scheduler, x_T, y, null, steps, w),
            "cbdm": lambda: sample(model, schedule, x_T, y, sampler="ddim", steps=steps, guidance=w)}


def _timed(fn: Callable[[], torch.Tensor], amp: bool, device: torch.device) -> tuple[float, torch.Tensor]:
    ctx = torch.autocast(device.type, torch.bfloat16) if amp else contextlib.nullcontext()
    sync(device)
    t0 = time.perf_counter()
    with ctx:
        out = fn()
    sync(device)
    return time.perf_counter() - t0, out.float().cpu()


def lively(model: torch.nn.Module) -> torch.nn.Module:
    """Re-draw every convolution and linear layer with torch's default init (seeded).

    The U-Net initialises its output convolution (and each residual branch's last one) with
    gain 1e-5, as the DDPM code does, so an untrained net's eps is ~1e-5 and the output comparison
    would only test the DDIM coefficients; redrawn, eps is O(1) and max |diff| tests the network."""
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            module.reset_parameters()
    return model


def load_network(args: argparse.Namespace, device: torch.device) -> tuple[Any, Any, str]:
    """The benchmark config's U-Net (seeded) or a run's EMA network, its schedule, and a description."""
    if args.run:
        from cbdm_core.run import load_run

        run = load_run(args.run, ema=True, device=device)
        return run.model, run.schedule, f"run {args.run} (EMA weights, step {run.step})"
    cfg = CONFIGS[args.config]
    model = lively(make_unet(cfg, device)).eval()
    return model, LinearSchedule(T=T), f"config {args.config} (seeded random weights, redrawn for O(1) eps)"


def measure_batch(model: Any, schedule: Any, batch: int, args: argparse.Namespace,
                  device: torch.device) -> list[PeerRow]:
    """All rows at one batch size, interleaved over ``args.rounds`` rounds (after one untimed warm-up)."""
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(batch, model.channels, model.image_size, model.image_size, generator=g).to(device)
    y = torch.randint(0, model.num_classes, (batch,), generator=g).to(device)
    runs = make_runs(model, schedule, x_T, y, args.steps, args.guidance)
    amps = {"off": [False], "bf16": [True], "both": [False, True]}[args.amp]
    rows = [PeerRow(name, amp, batch) for amp in amps for name in ("diffusers", "cbdm")]
    for row in rows:  # warm-up: allocator, oneDNN primitive caches; also the outputs compared below
        _, row.out = _timed(runs[row.name], row.amp, device)
    for r in range(args.rounds):
        order = rows if r % 2 == 0 else rows[::-1]  # alternate the order: neither loop always runs first
        for row in order:
            row.times.append(_timed(runs[row.name], row.amp, device)[0])
        print(f"batch {batch} round {r + 1}/{args.rounds}: "
              + ", ".join(f"{row.label} {row.times[-1]:.2f} s" for row in rows), file=sys.stderr, flush=True)
    return rows


def cpu_flags() -> str:
    """The speed-relevant CPU flags (bf16 / AMX / AVX-512) from /proc/cpuinfo."""
    try:
        for line in open("/proc/cpuinfo").read().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return " ".join(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512f", "avx2")))
    except OSError:
        pass
    return "n/a"


def report(rows: list[PeerRow], steps: int) -> list[str]:
    """Table lines for one batch size: img/s, the per-round cbdm/diffusers ratio and max |diff|."""
    lines = []
    for amp in sorted({r.amp for r in rows}):
        peer, ours = [next(r for r in rows if r.amp == amp and r.name == n) for n in ("diffusers", "cbdm")]
        ratios = [p / o for p, o in zip(peer.times, ours.times)]
        diff = (peer.out - ours.out).abs().max().item() / max(peer.out.abs().max().item(), 1e-12)
        for row in (peer, ours):
            sec = statistics.median(row.times)
            ratio = "" if row is peer else (f"{statistics.median(ratios):.2f}x "
                                             f"({min(ratios):.2f}-{max(ratios):.2f})")
            lines.append(f"{row.batch:>5} {row.label:<15} {sec:>9.2f} {row.batch / sec:>9.2f} "
                         f"{sec / steps * 100 / row.batch * 50_000 / 3600:>11.2f} h {ratio:>20} "
                         f"{'' if row is peer else f'{diff:.2e}':>10}")
    return lines


def run_against_diffusers(args: argparse.Namespace) -> None:
    """``sample.py --against diffusers``: measure and print the table and the ratio line."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model, schedule, what = load_network(args, device)
    print(f"guided DDIM (w={args.guidance}, {args.steps} steps), {what}, device {device.type}: "
          f"{cpu_model() if device.type == 'cpu' else torch.cuda.get_device_name(device)}, "
          f"{os.cpu_count()} cores, {torch.get_num_threads()} threads, CPU flags: {cpu_flags()}; "
          f"torch {torch.__version__}; median of {args.rounds} interleaved rounds", flush=True)
    head = (f"{'batch':>5} {'loop':<15} {'s/batch':>9} {'img/s':>9} {'50k DDIM-100':>13} "
            f"{'cbdm vs diffusers':>20} {'rel. diff':>10}")
    lines = [head, "-" * len(head)]
    summary = []
    for batch in args.batches:
        rows = measure_batch(model, schedule, batch, args, device)
        lines += report(rows, args.steps)
        for amp in sorted({r.amp for r in rows}):
            peer, ours = [next(r for r in rows if r.amp == amp and r.name == n) for n in ("diffusers", "cbdm")]
            ratio = statistics.median(p / o for p, o in zip(peer.times, ours.times))
            summary.append(f"batch {batch} {'bf16' if amp else 'fp32'}: {ratio:.2f}x")
    print("\n".join(lines))
    print("(ratio = diffusers time / cbdm time per round: > 1 means cbdm is faster; median (min-max) over rounds; "
          "50k DDIM-100 projects the measured s/batch to 100 steps and 50,000 images; rel. diff = "
          "max |cbdm - diffusers| / max |diffusers| over the batch's outputs, same precision)")
    print("cbdm vs diffusers images/s: " + ", ".join(summary))
