"""Speed settings of a training step: bf16 autocast, channels_last, torch.compile.

:func:`resolve_precision` turns the ``perf`` section of the config into concrete
choices for a device. Weights, optimizer state, EMA and the loss stay fp32; autocast
only lowers the precision of the network's matmuls and convolutions.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

import torch

from ..errors import CbdmError
from .cpu_choice import CpuChoice, capability_of, cpu_choice


@dataclass(frozen=True)
class Precision:
    """Concrete speed choices for one device.

    Attributes:
        device_type: ``cuda`` or ``cpu`` (what autocast is told).
        amp_dtype: the autocast dtype (``torch.bfloat16``) or None for fp32.
        channels_last: keep conv weights and activations in NHWC.
        compile: wrap the forward in ``torch.compile``.
        pass_layout: ``joint`` (one forward over all views) or ``split`` (one per view).
        skip_unread_rows: leave the extra rows no loss reads out of the pass (``perf.skip_unread_rows``).
        dropout_masks: how the network's dropout draws its masks (``torch`` or ``words``,
            :mod:`cbdm_core.nets.dropout`).
    """

    device_type: str = "cpu"
    amp_dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    compile: bool = False
    pass_layout: str = "joint"
    skip_unread_rows: bool = False
    dropout_masks: str = "torch"

    def autocast(self) -> ContextManager:
        """The forward's autocast context (a no-op context without amp)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.amp_dtype)

    def describe(self) -> str:
        amp = "bf16" if self.amp_dtype is torch.bfloat16 else "fp32"
        return (f"{amp}{', channels_last' if self.channels_last else ''}{', compiled' if self.compile else ''}"
                f"{', word dropout masks' if self.dropout_masks == 'words' else ''}, {self.pass_layout} views")

    def as_dict(self) -> dict[str, Any]:
        """The resolved choices, for run metadata (JSON-friendly)."""
        cpu = self.device_type == "cpu"
        return {"device": self.device_type, "amp": "bf16" if self.amp_dtype is torch.bfloat16 else "off",
                "channels_last": self.channels_last, "compile": self.compile, "pass_layout": self.pass_layout,
                "skip_unread_rows": self.skip_unread_rows, "dropout_masks": self.dropout_masks,
                "cpu_bf16": cpu_bf16_support() if cpu else None,
                "cpu_capability": capability_of(cpu_bf16_support()) if cpu else None}


_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names, best first


def _cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> Optional[set[str]]:
    """The CPU flags of the first processor in ``path``, or None where there is no such file."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return None


@functools.lru_cache(maxsize=None)
def cpu_bf16_support() -> str:
    """Which native bf16 matrix instructions this CPU has: ``amx_bf16``, ``avx512_bf16`` or ``""``.

    Cached: the answer cannot change in a process. Linux's cpuinfo flags are read first
    (they also say what the hypervisor lets a VM use); elsewhere torch's own CPU probes.
    Without these instructions oneDNN emulates bf16 and autocast only adds casts.
    """
    allowed = _onednn_bf16_allowed()
    flags = _cpuinfo_flags()
    if flags is not None:
        return next((f for f in _BF16_FLAGS if f in flags and f in allowed), "")
    probes = (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))
    for name, probe in probes:
        try:
            if name in allowed and getattr(torch.cpu, probe)():
                return name
        except (AttributeError, RuntimeError):  # private API: absent or failing on some builds
            continue
    return ""


def _onednn_bf16_allowed() -> tuple[str, ...]:
    """The bf16 flags oneDNN may use under ``ONEDNN_MAX_CPU_ISA`` (its documented cap on the
    instruction sets its kernels use: set to AVX2 on an AMX Xeon, the convolutions run as on an
    AVX2 laptop, and bf16 would be emulated there)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if not cap or cap == "ALL" or "AMX" in cap:
        return _BF16_FLAGS
    if "BF16" in cap or cap.startswith("AVX10"):  # AVX512_CORE_BF16, AVX10_1_512 (bf16 dot products, no tiles)
        return ("avx512_bf16",)
    return ()


# perf.pass_layout=auto on the CPU, by whether freed host memory is kept (perf.keep_host_memory).
# Measured (docs/benchmarks.md, benchmarks/pass_layout.py): the 2B pass loses to two B passes only
# when glibc hands its large activation buffers back to the kernel, so every step page-faults
# ~1 GB of fresh zeroed pages; with the memory kept the two layouts cost the same (joint a
# few % ahead, fp32 and bf16 alike), and the capability table (cpu_choice.py) decides. CUDA always
# runs the joint pass.
RELEASED_MEMORY_LAYOUT = "split"


def describe_device(device: torch.device) -> str:
    """``cuda (NAME)`` or ``cpu (bf16: amx_bf16)`` for run headers and benchmarks."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} (native bf16: {cpu_bf16_support() or 'none'})"


def cpu_auto_choice() -> CpuChoice:
    """The ``auto`` settings of this CPU's capability class (:mod:`.cpu_choice`)."""
    return cpu_choice(capability_of(cpu_bf16_support()))


def _resolve_amp(amp: str, cuda: bool, choice: Optional[CpuChoice]) -> Optional[torch.dtype]:
    if amp == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise CbdmError("perf.amp=bf16: this GPU has no bfloat16 support; use perf.amp=off")
        return torch.bfloat16
    if amp != "auto":
        return None
    if cuda:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    # CPU bf16 autocast only pays on CPUs with bf16 matrix units (docs/benchmarks.md: 1.6x-2.x);
    # without them oneDNN emulates bf16 and the casts cost more than they save.
    return torch.bfloat16 if choice is not None and choice.amp == "bf16" else None


def resolve_precision(perf: Any, device: torch.device) -> Precision:
    """``perf`` (a :class:`~cbdm_core.config.PerfConfig` or anything with ``amp``,
    ``compile`` and ``channels_last``) resolved for ``device``; on the CPU, ``auto`` follows
    the capability table of :mod:`.cpu_choice`."""
    cuda = device.type == "cuda"
    choice = None if cuda else cpu_auto_choice()
    amp_dtype = _resolve_amp(getattr(perf, "amp", "auto"), cuda, choice)
    compile_opt = getattr(perf, "compile", "auto")
    compiled = compile_opt == "on" or (compile_opt == "auto" and (cuda or bool(choice and choice.compile)))
    cl = getattr(perf, "channels_last", "auto")
    # auto: the table's column for the precision the step runs in (NHWC pays in fp32, not in bf16).
    table_cl = bool(choice and choice.channels_last(bf16=amp_dtype is not None))
    channels_last = cl == "on" or (cl == "auto" and (cuda or table_cl))
    layout = getattr(perf, "pass_layout", "auto")
    if layout == "auto":
        keeps = getattr(perf, "keep_host_memory", "auto") in ("auto", "on")  # auto: on for CPU training
        # Memory handed back to the kernel: two B passes (RELEASED_MEMORY_LAYOUT), whatever the capability.
        layout = "joint" if cuda else (choice.pass_layout if keeps and choice else RELEASED_MEMORY_LAYOUT)
    skip_opt = getattr(perf, "skip_unread_rows", "auto")
    # auto: the CPU only. Not tied to compile, so that a compile that falls back to eager trains the same
    # weights as eager (a compiled CPU step should re-compile once, for a dynamic batch size; not measured).
    skip = skip_opt == "on" or (skip_opt == "auto" and not cuda)
    masks = getattr(perf, "dropout_masks", "auto")
    # auto: 64-bit-word masks on the CPU, where bernoulli_ costs ~10x the multiply (every capability class:
    # it is the generator's scalar loop, not the arithmetic units); CUDA's dropout is one fused kernel.
    masks = ("torch" if cuda else "words") if masks == "auto" else masks
    return Precision(device_type=device.type, amp_dtype=amp_dtype, channels_last=channels_last, compile=compiled,
                     pass_layout=layout, skip_unread_rows=skip, dropout_masks=masks)


def to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """NHWC weights in place (parameters keep their identity, so optimizers and EMA still see them)."""
    return module.to(memory_format=torch.channels_last)


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimizer state the memory layout of its parameter.

    A checkpoint stores contiguous tensors; fused/foreach Adam is fastest (and the
    fused kernel is only guaranteed to work) when state and parameter strides agree.
    """
    for p, state in optimizer.state.items():
        for key, value in list(state.items()):
            if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def warn_eager(exc: BaseException) -> None:
    warnings.warn(f"torch.compile failed ({_first_line(exc)}); continuing in eager mode",
                  RuntimeWarning, stacklevel=3)


def compile_module(module: torch.nn.Module, enabled: bool, **kwargs: Any) -> tuple[Callable, bool]:
    """``(torch.compile(module), True)``, or ``(module, False)`` when disabled or when
    ``torch.compile`` itself raises (a warning says why). Compilation happens lazily
    at the first call; :class:`~cbdm_core.training.step.TrainStep` falls back to eager
    if that first call fails."""
    if not enabled:
        return module, False
    try:
        return torch.compile(module, **kwargs), True
    except Exception as exc:  # any failure of the compiler stack must not stop training
        warn_eager(exc)
        return module, False
