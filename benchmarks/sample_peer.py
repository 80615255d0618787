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
  calls it (one 2B forward per step through the ``cfg`` guidance), with the CPU capability's sampling
  choice (``cbdm_core/sampling/cpu_choice.py``: a prepared copy of the network).
* ``cbdm as given``: the same call on the network as given (a plain callable around it, which is never
  prepared): the path before the sampling choice, timed in the same rounds.
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
from cbdm_core.sampling.cpu_choice import sampling_choice
from cbdm_core.training.cpu_choice import capability_of
from cbdm_core.training.precision import cpu_bf16_support
from cbdm_core.schedules import LinearSchedule

from train_step import CONFIGS, T, cpu_flags, cpu_model, make_unet, sync


NAMES = ("diffusers", "cbdm", "cbdm as given")


@dataclass
class PeerRow:
    name: str  # one of NAMES
    amp: bool
    batch: int
    times: list[float] = field(default_factory=list)  # wall seconds per batch, one per round
    cpu_times: list[float] = field(default_factory=list)  # process CPU seconds (robust at 1 thread)
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
            "cbdm": lambda: sample(model, schedule, x_T, y, sampler="ddim", steps=steps, guidance=w),
            "cbdm as given": lambda: sample(as_given(model), schedule, x_T, y, sampler="ddim", steps=steps,
                                            guidance=w)}


def as_given(model: Any) -> Callable[..., torch.Tensor]:
    """``model`` behind a plain callable: ``sample`` runs it as it is (no prepared CPU copy)."""
    def eps(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model(x, t, y)

    eps.num_classes = model.num_classes  # type: ignore[attr-defined]
    return eps


def _timed(fn: Callable[[], torch.Tensor], amp: bool, device: torch.device) -> tuple[float, float, torch.Tensor]:
    """Wall seconds, process CPU seconds and the output of one call."""
    ctx = torch.autocast(device.type, torch.bfloat16) if amp else contextlib.nullcontext()
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    with ctx:
        out = fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0, out.float().cpu()


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
    rows = [PeerRow(name, amp, batch) for amp in amps for name in NAMES]
    for row in rows:  # warm-up: allocator, oneDNN primitive caches; also the outputs compared below
        row.out = _timed(runs[row.name], row.amp, device)[2]
    for r in range(args.rounds):
        order = rows if r % 2 == 0 else rows[::-1]  # alternate the order: neither loop always runs first
        for row in order:
            wall, cpu, _ = _timed(runs[row.name], row.amp, device)
            row.times.append(wall)
            row.cpu_times.append(cpu)
        print(f"batch {batch} round {r + 1}/{args.rounds}: "
              + ", ".join(f"{row.label} {row.times[-1]:.2f} s" for row in rows), file=sys.stderr, flush=True)
    return rows


def _ratio(peer: list[float], ours: list[float]) -> tuple[float, float, float]:
    """Median, min and max over rounds of peer time / our time (> 1: ours is faster)."""
    ratios = [p / o for p, o in zip(peer, ours)]
    return statistics.median(ratios), min(ratios), max(ratios)


def pair(rows: list[PeerRow], amp: bool, ours: str = "cbdm") -> tuple[PeerRow, PeerRow]:
    """The (diffusers, ``ours``) rows of one precision."""
    peer, mine = [next(r for r in rows if r.amp == amp and r.name == n) for n in ("diffusers", ours)]
    return peer, mine


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-12)


def report(rows: list[PeerRow], steps: int) -> list[str]:
    """Table lines for one batch size: wall and CPU time, img/s, the per-round ratios to diffusers, rel. diff."""
    lines = []
    for amp in sorted({r.amp for r in rows}):
        for name in NAMES:
            peer, row = pair(rows, amp, name)
            sec, cpu = statistics.median(row.times), statistics.median(row.cpu_times)
            wall_r = cpu_r = rel = ""
            if row is not peer:
                wall_r = "{:.2f}x ({:.2f}-{:.2f})".format(*_ratio(peer.times, row.times))
                cpu_r = "{:.2f}x ({:.2f}-{:.2f})".format(*_ratio(peer.cpu_times, row.cpu_times))
                rel = f"{_rel_diff(row.out, peer.out):.1e}"
            lines.append(f"{row.batch:>5} {row.label:<19} {sec:>8.2f} {cpu:>8.2f} {row.batch / sec:>8.2f} "
                         f"{sec / steps * 100 / row.batch * 50_000 / 3600:>9.1f} h {wall_r:>19} {cpu_r:>19} {rel:>9}")
    return lines


def choice_lines(rows: list[PeerRow]) -> list[str]:
    """Per precision: the sampling choice's CPU-time speed-up over the network as given, and how far apart
    their outputs are (the same noise and labels)."""
    out = []
    for amp in sorted({r.amp for r in rows}):
        given, chosen = pair(rows, amp, "cbdm as given")[1], pair(rows, amp)[1]
        out.append("batch {} {}: cbdm vs cbdm as given {:.2f}x CPU ({:.2f}-{:.2f}), rel. diff {:.1e}".format(
            chosen.batch, "bf16" if amp else "fp32", *_ratio(given.cpu_times, chosen.cpu_times),
            _rel_diff(chosen.out, given.out)))
    return out


def run_against_diffusers(args: argparse.Namespace) -> None:
    """``sample.py --against diffusers``: measure and print the table and the ratio line."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model, schedule, what = load_network(args, device)
    print(f"guided DDIM (w={args.guidance}, {args.steps} steps), {what}, device {device.type}: "
          f"{cpu_model() if device.type == 'cpu' else torch.cuda.get_device_name(device)}, "
          f"{os.cpu_count()} cores, {torch.get_num_threads()} threads, CPU flags: {cpu_flags()}; "
          f"torch {torch.__version__}; median of {args.rounds} interleaved rounds; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    if device.type == "cpu":
        cap = capability_of(cpu_bf16_support())
        print(f"sampling choice for this CPU ({cap}, cbdm_core/sampling/cpu_choice.py): {sampling_choice(cap)}",
              flush=True)
    head = (f"{'batch':>5} {'loop':<19} {'wall s':>8} {'CPU s':>8} {'img/s':>8} {'50k DDIM-100':>11} "
            f"{'speed-up (wall)':>19} {'speed-up (CPU)':>19} {'rel. diff':>9}")
    lines = [head, "-" * len(head)]
    summary, choice = [], []
    for batch in args.batches:
        rows = measure_batch(model, schedule, batch, args, device)
        lines += report(rows, args.steps)
        choice += choice_lines(rows)
        for amp in sorted({r.amp for r in rows}):
            peer, ours = pair(rows, amp)
            summary.append(f"batch {batch} {'bf16' if amp else 'fp32'}: {_ratio(peer.times, ours.times)[0]:.2f}x wall, "
                           f"{_ratio(peer.cpu_times, ours.cpu_times)[0]:.2f}x CPU")
    print("\n".join(lines))
    print("(wall s, CPU s: median per batch over the rounds; CPU s is the process CPU time, the robust figure at 1 "
          "thread on a shared machine; speed-up = diffusers time / cbdm time in each round, median (min-max): > 1 means "
          "cbdm is faster; img/s and 50k DDIM-100 (projected to 100 steps, 50,000 images) from wall time; rel. diff = "
          "max |cbdm - diffusers| / max |diffusers| over the outputs, same precision)")
    print("\n".join(choice))
    print("cbdm speed-up over diffusers: " + "; ".join(summary))
