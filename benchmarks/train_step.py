"""Benchmark one CBDM training step: a reference-style step vs this project's step.

    python benchmarks/train_step.py --device cpu --config small
    python benchmarks/train_step.py --device cuda --config paper --json out.json

Rows (same network, same batch, one process):

* ``reference``: the original CBDM code's step written out here: fp32, one forward
  for y and a second for y', a host-side numpy draw of y', a progress-bar loss read
  every step, Adam, EMA as a state-dict loop.
* ``cbdm``: this project's step (:func:`cbdm_core.training.step.build_train_step`, the
  trainer's step) with the ``--amp/--compile/--channels-last`` settings (default
  ``auto``: the trainer's defaults for the device).
* extra ``cbdm`` rows with other speed settings (``--variants``).
* ``ddpm``: this project's step with tau = 0 (one forward), for the CBDM/DDPM cost ratio.

Timing interleaves the rows in rounds (``--rounds``) and reports the median, which
keeps a shared machine's load from favouring one row; the process CPU time per step
is reported too (at ``--threads 1`` it hardly depends on other jobs). On the CPU the
process keeps freed host memory as the trainer does (``--no-keep-host-memory`` to
turn that off; it applies to every row, the reference included). Memory: on CUDA the peak
allocated during one step above the resting state; on the CPU the peak RSS growth of a
fresh process over its first two steps (weights, gradients, Adam state, activations).
The last line is ``speedup vs reference: X.XX`` for the ``cbdm`` row.

``--method a,b+c,...`` measures training methods instead (any registered method, or a
composition ``a+b``, each with its default options): one row per method and a ``ddpm`` row
(no method), same network and batch, interleaved; it prints each method's step time
relative to DDPM (wall and process CPU time), the "cost per step" of docs/methods.md:

    OMP_NUM_THREADS=1 python benchmarks/train_step.py --device cpu --config small --threads 1 \
        --method cbdm,t2h,coral,cm,t2h+cm --no-memory
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from cbdm_core.methods.cbdm import CBDMRegularizer
from cbdm_core.host_memory import keep_freed_host_memory
from cbdm_core.nets.unet import UNet, UNetOptions
from cbdm_core.objectives import EpsilonLoss
from cbdm_core.schedules import LinearSchedule
from cbdm_core.training.precision import Precision, describe_device, resolve_precision
from cbdm_core.training.step import build_train_step

CONFIGS = {
    # The paper's CIFAR U-Net (35.7M parameters), CIFAR-100, batch 128.
    "paper": {"unet": {"ch": 128, "ch_mult": [1, 2, 2, 2], "attn": [1], "num_res_blocks": 2, "dropout": 0.1},
              "classes": 100, "size": 32, "channels": 3, "batch": 128},
    # A CPU-sized U-Net (6.5M parameters) at the same resolution.
    "small": {"unet": {"ch": 64, "ch_mult": [1, 2, 2], "attn": [1], "num_res_blocks": 2, "dropout": 0.1},
              "classes": 100, "size": 32, "channels": 3, "batch": 32},
    # The studies' network (the quickstart preset's U-Net, 0.7M parameters) on 8x8 digits, 10 classes.
    "digits": {"unet": {"ch": 32, "ch_mult": [1, 2], "attn": [1], "num_res_blocks": 1, "dropout": 0.0,
                        "num_groups": 8},
               "classes": 10, "size": 8, "channels": 1, "batch": 64},
}
T = 1000
TAU_REF = 1.0  # the reference code's tau (weight tau * t / T), = tau 0.001 here
GAMMA = 0.25
P_UNCOND = 0.1
LR = 2e-4
EMA_DECAY = 0.9999


@dataclass
class Row:
    name: str
    kind: str  # reference | project
    tau: float = 0.001
    amp: str = "auto"
    compile: str = "auto"
    channels_last: str = "auto"
    pass_layout: str = "auto"
    dropout_masks: str = "auto"
    method: str = ""  # with --method: registered method names joined by "+" ("ddpm": none)
    settings: str = ""
    ms_per_step: float = float("nan")
    cpu_ms_per_step: float = float("nan")  # process CPU time: at 1 thread, robust to other jobs
    images_per_sec: float = float("nan")
    mem_mib: Optional[float] = None


def make_unet(cfg: dict, device: torch.device) -> UNet:
    torch.manual_seed(0)
    return UNet(UNetOptions(**cfg["unet"]), image_size=cfg["size"], channels=cfg["channels"],
                num_classes=cfg["classes"]).to(device)


def long_tail_probs(classes: int, imb: float = 0.01) -> torch.Tensor:
    """y' ~ the training label frequencies of a CIFAR-LT-style exponential profile."""
    counts = torch.tensor([imb ** (i / max(classes - 1, 1)) for i in range(classes)], dtype=torch.float64)
    return (counts / counts.sum()).float()


def make_batch(cfg: dict, device: torch.device, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch, cfg["channels"], cfg["size"], cfg["size"], generator=g) * 2 - 1
    y = torch.multinomial(long_tail_probs(cfg["classes"]), batch, replacement=True, generator=g)
    return x0.to(device), y.to(device)


# -- the reference step ----------------------------------------------------------------------------------


def _extract(v: torch.Tensor, t: torch.Tensor, shape) -> torch.Tensor:
    out = torch.gather(v, index=t, dim=0).float()
    return out.view([t.shape[0]] + [1] * (len(shape) - 1))


def reference_step(cfg: dict, device: torch.device, batch: int) -> tuple[Callable[[int], None], torch.nn.Module]:
    """The original CBDM training step (pytorch-ddpm style), as its code runs it."""
    model = make_unet(cfg, device)
    ema_model = copy.deepcopy(model)
    betas = torch.linspace(1e-4, 0.02, T).double()
    alphas_bar = torch.cumprod(1.0 - betas, dim=0)
    sqrt_ab, sqrt_1mab = alphas_bar.sqrt().to(device), (1.0 - alphas_bar).sqrt().to(device)
    probs = long_tail_probs(cfg["classes"]).double().numpy()
    probs = probs / probs.sum()
    optim = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda=lambda s: min(s, 5000) / 5000)
    x_0, y_0 = make_batch(cfg, device, batch)

    def step(i: int) -> None:
        t = torch.randint(T, size=(x_0.shape[0],), device=device)
        noise = torch.randn_like(x_0)
        x_t = _extract(sqrt_ab, t, x_0.shape) * x_0 + _extract(sqrt_1mab, t, x_0.shape) * noise
        y = None if torch.rand(1)[0] < P_UNCOND else y_0  # whole-batch label dropout
        h = model(x_t, t, y)
        loss = F.mse_loss(h, noise, reduction="none")
        loss_reg = torch.tensor(0.0).to(device)
        if y is not None:
            y_bal = torch.Tensor(np.random.choice(cfg["classes"], size=len(x_0), p=probs)).to(device).long()
            h_bal = model(x_t, t, y_bal)  # the second forward
            weight = t[:, None, None, None] / T * TAU_REF
            loss_reg = weight * F.mse_loss(h, h_bal.detach(), reduction="none")
            loss_com = weight * F.mse_loss(h.detach(), h_bal, reduction="none")
            loss_reg = loss_reg + GAMMA * loss_com
        total = loss.mean() + loss_reg.mean()
        optim.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        sd, ema = model.state_dict(), ema_model.state_dict()
        with torch.no_grad():
            for k in sd:
                ema[k].mul_(EMA_DECAY).add_(sd[k], alpha=1 - EMA_DECAY)
        _ = "%.3f" % total  # the progress bar reads the loss every step

    return step, model


# -- this project's step ---------------------------------------------------------------------------------


class _Perf:
    keep_host_memory = "auto"  # process-wide; main() sets it from --keep-host-memory (it steers pass_layout=auto)

    def __init__(self, amp: str, compile: str, channels_last: str, pass_layout: str = "auto",
                 dropout_masks: str = "auto"):
        self.amp, self.compile, self.channels_last, self.pass_layout = amp, compile, channels_last, pass_layout
        self.dropout_masks = dropout_masks


def row_precision(row: Row, device: torch.device) -> Precision:
    return resolve_precision(_Perf(row.amp, row.compile, row.channels_last, row.pass_layout, row.dropout_masks),
                             device)


def long_tail_counts(classes: int, largest: int = 500) -> torch.Tensor:
    """Training images per class of a CIFAR-LT-style profile (what methods see as class counts)."""
    probs = long_tail_probs(classes)
    return (probs / probs.max() * largest).round().clamp_min(1).long()


def registered_methods(spec: str, cfg: dict, schedule: LinearSchedule) -> list:
    """The methods of ``a+b`` (registered names, default options) as the trainer builds them."""
    from cbdm_core.methods.base import MethodBuildContext
    from cbdm_core.registry import lookup

    if spec == "ddpm":
        return []
    from cbdm_core.build import label_distribution_probs

    ctx = MethodBuildContext(class_counts=long_tail_counts(cfg["classes"]), num_classes=cfg["classes"],
                             schedule=schedule, label_distribution=label_distribution_probs())
    out = []
    for name in spec.split("+"):
        method_spec = lookup("method", name)
        method = method_spec.build(method_spec.options_model(), ctx)
        method.name = method.name or name
        out.append(method)
    return out


def project_step(cfg: dict, device: torch.device, batch: int, row: Row) -> tuple[Callable[[int], None], Precision]:
    """This project's step, wired by the trainer's own factory."""
    precision = row_precision(row, device)
    model = make_unet(cfg, device)
    schedule = LinearSchedule(T=T)
    if row.method:
        regs = registered_methods(row.method, cfg, schedule)
        for m in regs:  # before the EMA copy, as the trainer does
            m.attach(model)
        model = model.to(device)
    else:
        regs = [] if row.tau == 0 else [CBDMRegularizer(probs=long_tail_probs(cfg["classes"]), tau=row.tau,
                                                        gamma=GAMMA)]
    ema_model = copy.deepcopy(model).eval().requires_grad_(False)
    train_step = build_train_step(model, ema_model, EpsilonLoss(schedule), regs, schedule=schedule,
                                  num_classes=cfg["classes"], class_counts=long_tail_counts(cfg["classes"]),
                                  p_uncond=P_UNCOND, lr=LR, grad_clip=1.0,
                                  ema_decay=EMA_DECAY, precision=precision)
    x0, y = make_batch(cfg, device, batch)
    if precision.channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)

    def step(i: int) -> None:
        train_step(i, x0, y, lr=LR * min(1.0, (i + 1) / 5000))

    return step, precision


def build_row(cfg: dict, device: torch.device, batch: int, row: Row) -> Callable[[int], None]:
    if row.kind == "reference":
        row.settings = "fp32, 2 forwards, state-dict EMA"
        return reference_step(cfg, device, batch)[0]
    step, precision = project_step(cfg, device, batch, row)
    if row.method:
        row.settings = precision.describe().rsplit(", ", 1)[0] + f", method {row.method}"
        return step
    passes = {"joint": ", one 2B forward", "split": ", 2 forwards"}[precision.pass_layout]
    row.settings = precision.describe().rsplit(", ", 1)[0] + (", 1 forward" if row.tau == 0 else passes)
    return step


def cpu_flags() -> str:
    """The speed-relevant CPU flags (AVX2 / AVX-512 / bf16 / AMX) of /proc/cpuinfo, and the kernels'
    instruction-set caps when the environment sets them (an emulated older CPU: a measurement made so
    must say so)."""
    flags = "n/a"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                wanted = ("amx", "avx512_bf16", "avx512f", "avx2")
                flags = " ".join(f for f in line.split(":", 1)[1].split() if f.startswith(wanted)) \
                    or "none of avx2/avx512/amx"
                break
    except OSError:
        pass
    caps = [f"{var}={os.environ[var]}" for var in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if os.environ.get(var)]
    if caps:
        flags += f"; kernels held to {', '.join(caps)} (ATen runs {torch.backends.cpu.get_cpu_capability()})"
    return flags


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} CPU"


# -- measuring -------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cuda_step_memory(step: Callable[[int], None], device: torch.device, i: int) -> float:
    """Peak MiB allocated during one step above what was allocated before it."""
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step(i)
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def cpu_memory_probe(args: argparse.Namespace, row: Row) -> Optional[float]:
    """Peak RSS growth (MiB) of a fresh process over the row's first two steps."""
    if row.kind == "project" and row.compile == "on":
        return None  # recompiling in a fresh process costs minutes on a CPU
    cmd = [sys.executable, __file__, "--device", "cpu", "--config", args.config, "--batch", str(args.batch),
           "--threads", str(args.threads), "--probe", json.dumps(asdict(row)),
           "--keep-host-memory" if args.keep_host_memory else "--no-keep-host-memory"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def probe(args: argparse.Namespace) -> None:
    row = Row(**json.loads(args.probe))
    cfg, device = CONFIGS[args.config], torch.device("cpu")
    step = build_row(cfg, device, args.batch, row)
    rss0 = _proc_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak-RSS mark (VmHWM)
    except OSError:
        pass
    step(0)
    step(1)
    print((_proc_kib("VmHWM") - rss0) / 1024)


def measure(rows: list[Row], cfg: dict, device: torch.device, args: argparse.Namespace) -> None:
    steps = {}
    for row in rows:
        print(f"building {row.name} ...", file=sys.stderr, flush=True)
        steps[row.name] = build_row(cfg, device, args.batch, row)
        t0 = time.perf_counter()
        for i in range(args.warmup):  # compilation, cuDNN autotuning, optimizer state
            steps[row.name](i)
        sync(device)
        print(f"  warm-up {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
        if device.type == "cuda":
            row.mem_mib = cuda_step_memory(steps[row.name], device, args.warmup)
    times: dict[str, list[float]] = {r.name: [] for r in rows}
    cpu_times: dict[str, list[float]] = {r.name: [] for r in rows}
    for r in range(args.rounds):
        for row in rows:
            step = steps[row.name]
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(args.steps):
                step(args.warmup + 1 + r * args.steps + i)
            sync(device)
            times[row.name].append((time.perf_counter() - t0) / args.steps)
            cpu_times[row.name].append((time.process_time() - c0) / args.steps)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {t[-1] * 1e3:.0f} ms" for n, t in times.items()),
              file=sys.stderr, flush=True)
    for row in rows:
        row.ms_per_step = statistics.median(times[row.name]) * 1e3
        row.cpu_ms_per_step = statistics.median(cpu_times[row.name]) * 1e3
        row.images_per_sec = args.batch / (row.ms_per_step / 1e3)
    if device.type == "cpu" and not args.no_memory:
        for row in rows:
            row.mem_mib = cpu_memory_probe(args, row)


def default_variants(device: torch.device, main: Row) -> list[Row]:
    if device.type == "cuda":  # what each speed setting adds
        return [Row("cbdm fp32 eager", "project", amp="off", compile="off", channels_last="off"),
                Row("cbdm bf16 eager", "project", amp="bf16", compile="off", channels_last="on")]
    # The other precision than the default's, so both CPU paths are measured side by side.
    bf16 = row_precision(main, device).amp_dtype is not None
    return [Row("cbdm fp32" if bf16 else "cbdm bf16", "project", amp="off" if bf16 else "bf16",
                compile=main.compile, channels_last=main.channels_last, pass_layout=main.pass_layout)]


# --variants candidates: every CPU setting the per-capability table (cpu_choice.py) chooses between,
# compile excepted (a CPU inductor compile takes minutes; add off:on:off:joint,bf16:on:off:joint for it).
CANDIDATES = "off:off:off:joint,off:off:off:split,off:off:on:joint,bf16:off:off:joint,bf16:off:off:split,bf16:off:on:joint"


def parse_variants(spec: str) -> list[Row]:
    """``amp:compile:channels_last[:pass_layout[:dropout_masks]]`` separated by commas, e.g.
    ``bf16:off:off,off:on:off:split,bf16:off:off:joint:torch`` (``candidates``: :data:`CANDIDATES`)."""
    spec = CANDIDATES if spec == "candidates" else spec
    rows = []
    for item in filter(None, spec.split(",")):
        amp, comp, cl, layout, masks = (item.split(":") + ["auto"] * 5)[:5]
        name = f"cbdm {amp}/{comp}/{cl}" + ("" if layout == "auto" and masks == "auto" else f"/{layout}") + \
            ("" if masks == "auto" else f"/{masks}")
        rows.append(Row(name, "project", amp=amp, compile=comp, channels_last=cl, pass_layout=layout,
                        dropout_masks=masks))
    return rows


def table(rows: list[Row], batch: int) -> str:
    ref = rows[0]
    head = (f"{'step':<20} {'settings':<44} {'ms/step':>9} {'img/s':>9} {'vs ref':>7} {'cpu ms':>9} "
            f"{'vs ref':>7} {'mem MiB':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        mem = "n/a" if r.mem_mib is None else f"{r.mem_mib:.0f}"
        lines.append(f"{r.name:<20} {r.settings:<44} {r.ms_per_step:>9.1f} {r.images_per_sec:>9.1f} "
                     f"{r.images_per_sec / ref.images_per_sec:>6.2f}x {r.cpu_ms_per_step:>9.1f} "
                     f"{ref.cpu_ms_per_step / r.cpu_ms_per_step:>6.2f}x {mem:>8}")
    return "\n".join(lines)


def measure_methods(args: argparse.Namespace, cfg: dict, device: torch.device) -> None:
    """``--method``: one row per method spec and a ddpm row; prints the cost per step vs DDPM."""
    from cbdm_core.errors import CbdmError

    specs = [s.strip() for s in args.method.split(",") if s.strip()]
    schedule = LinearSchedule(T=T)
    for spec in specs:  # unknown names fail here, before any timing
        try:
            registered_methods(spec, cfg, schedule)
        except CbdmError as exc:
            sys.exit(f"--method {spec}: {exc}")
    perf = {"amp": args.amp, "compile": args.compile, "channels_last": args.channels_last,
            "pass_layout": args.pass_layout, "dropout_masks": args.dropout_masks}
    rows = [Row("ddpm", "project", method="ddpm", **perf)] + [Row(s, "project", method=s, **perf)
                                                             for s in specs if s != "ddpm"]
    measure(rows, cfg, device, args)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{cpu_model()}, {os.cpu_count()} cores, {args.threads} threads, {describe_device(device)}"
    print(f"train step per method, config {args.config} (batch {args.batch}, {cfg['size']}x{cfg['size']}x"
          f"{cfg['channels']}, {cfg['classes']} classes), {machine}, torch {torch.__version__}, "
          f"{args.rounds} rounds x {args.steps} steps, median")
    print(table(rows, args.batch))
    base = rows[0]
    print(f"{'method':<12} {'ms/step':>9} {'vs ddpm':>8} {'cpu ms':>9} {'vs ddpm':>8}")
    for r in rows:
        print(f"{r.name:<12} {r.ms_per_step:>9.1f} {r.ms_per_step / base.ms_per_step:>7.2f}x "
              f"{r.cpu_ms_per_step:>9.1f} {r.cpu_ms_per_step / base.cpu_ms_per_step:>7.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "train_step --method", "config": args.config, "batch": args.batch, "device": machine,
            "torch": torch.__version__, "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "rows": [asdict(r) for r in rows],
            "vs_ddpm": {r.name: r.ms_per_step / base.ms_per_step for r in rows},
            "cpu_vs_ddpm": {r.name: r.cpu_ms_per_step / base.cpu_ms_per_step for r in rows}}, indent=2))


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--config", choices=sorted(CONFIGS), default="small")
    p.add_argument("--batch", type=int, help="batch size (default: the config's)")
    p.add_argument("--steps", type=int, help="timed steps per row and round (default cpu 3, cuda 20)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, help="untimed steps per row (default cpu 1, cuda 5; compile needs >= 2)")
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--pass-layout", choices=["auto", "joint", "split"], default="auto")
    p.add_argument("--dropout-masks", choices=["auto", "torch", "words"], default="auto",
                   help="how the U-Net's dropout draws its masks (perf.dropout_masks)")
    p.add_argument("--variants", default=None,
                   help="extra rows as amp:compile:channels_last[:pass_layout[:dropout_masks]],...; 'none' for none; 'candidates' for "
                        "every setting the CPU capability table chooses between (default: per device)")
    p.add_argument("--quick", action="store_true",
                   help="a 2-3 minute run on a quiet machine: 2 rounds x 1 step, 1 warm-up step, no memory probes")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    p.add_argument("--no-memory", action="store_true", help="skip the CPU memory probes")
    p.add_argument("--keep-host-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="configure malloc as the trainer does on the CPU (cbdm_core/host_memory.py; default: on "
                        "for --device cpu, as in the trainer); it is process-wide, so it applies to every row, "
                        "the reference included")
    p.add_argument("--method", default=None,
                   help="measure these training methods against ddpm instead: registered names or a+b "
                        "compositions, comma-separated (e.g. cbdm,t2h,coral,cm,t2h+cm)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--probe", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.keep_host_memory is None:
        args.keep_host_memory = args.device == "cpu"
    _Perf.keep_host_memory = "on" if args.keep_host_memory else "off"
    if args.keep_host_memory and not keep_freed_host_memory():
        sys.exit("--keep-host-memory: not available on this platform (needs Linux with glibc)")
    cfg = CONFIGS[args.config]
    args.batch = args.batch or cfg["batch"]
    if args.probe:
        return probe(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU is available")
    cuda = device.type == "cuda"
    if args.quick:
        args.steps, args.rounds, args.no_memory = args.steps or 1, min(args.rounds, 2), True
    args.steps = args.steps or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    if cuda:
        torch.backends.cudnn.benchmark = True

    if args.method:
        return measure_methods(args, cfg, device)
    main_row = Row("cbdm", "project", amp=args.amp, compile=args.compile, channels_last=args.channels_last,
                   pass_layout=args.pass_layout, dropout_masks=args.dropout_masks)
    chosen = row_precision(main_row, device)
    capability = describe_device(device)
    print(f"{capability}; cbdm row precision: {chosen.describe()} (--amp {args.amp}, --pass-layout "
          f"{args.pass_layout})", flush=True)
    if not cuda:
        print(f"CPU capability class: {chosen.as_dict()['cpu_capability']} (cbdm_core/training/cpu_choice.py); "
              f"CPU flags: {cpu_flags()}", flush=True)
    extra = default_variants(device, main_row) if args.variants is None else (
        [] if args.variants == "none" else parse_variants(args.variants))
    ddpm = Row("ddpm (tau=0)", "project", tau=0.0, amp=args.amp, compile=args.compile,
               channels_last=args.channels_last, pass_layout=args.pass_layout, dropout_masks=args.dropout_masks)
    rows = [Row("reference", "reference"), main_row, *extra, ddpm]
    measure(rows, cfg, device, args)

    machine = torch.cuda.get_device_name(device) if cuda else f"{cpu_model()} ({cpu_flags()}), " \
        f"{os.cpu_count()} cores, {args.threads} threads, {capability}"
    print(f"train step, config {args.config} (batch {args.batch}, {cfg['size']}x{cfg['size']}x{cfg['channels']}, "
          f"{cfg['classes']} classes), {machine}, torch {torch.__version__}, "
          f"{args.rounds} rounds x {args.steps} steps, median"
          + (", malloc keeps freed memory" if args.keep_host_memory else ""))
    print(f"cbdm row: {chosen.describe()}")
    print(table(rows, args.batch))
    ratio = main_row.ms_per_step / ddpm.ms_per_step
    print(f"CBDM/DDPM step time (this project): {ratio:.2f} (CPU time: "
          f"{main_row.cpu_ms_per_step / ddpm.cpu_ms_per_step:.2f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "train_step", "config": args.config, "batch": args.batch, "device": machine,
            "torch": torch.__version__, "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "precision": chosen.as_dict(),
            "rows": [asdict(r) for r in rows], "cbdm_over_ddpm": ratio,
            "speedup_vs_reference": main_row.images_per_sec / rows[0].images_per_sec}, indent=2))
    print(f"speedup vs reference: {main_row.images_per_sec / rows[0].images_per_sec:.2f}")


if __name__ == "__main__":
    main()
