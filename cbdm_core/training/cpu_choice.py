"""What ``perf.*=auto`` means on a CPU, per capability: one measured table.

A CPU falls in one of three capability classes, by the bf16 matrix instructions it has
(:func:`cbdm_core.training.precision.cpu_bf16_support`):

* ``amx``: AMX-BF16 tiles (Intel Xeon 4th gen and later);
* ``avx512-bf16``: AVX512-BF16 dot products but no AMX (AMD Zen 4, Intel Cooper Lake);
* ``fp32-only``: neither (most laptops, ARM, older servers): oneDNN would emulate bf16.

Each class gets the settings measured fastest for it (docs/benchmarks.md, "Per-capability
choice"); a setting that could not be shown faster keeps its earlier default. Only the ``auto``
settings follow the table: an explicit ``perf.amp=off`` and the like always win, and
``perf.keep_host_memory=off`` still means two B passes (page faults, see ``precision.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

CAPABILITIES = ("amx", "avx512-bf16", "fp32-only")
_BY_FLAG = {"amx_bf16": "amx", "avx512_bf16": "avx512-bf16", "": "fp32-only"}


@dataclass(frozen=True)
class CpuChoice:
    """The ``auto`` speed settings of one capability class.

    Attributes:
        amp: ``bf16`` (autocast) or ``off`` (fp32).
        fp32_channels_last: NHWC weights and activations when the step runs in fp32 (the
            class's default or an explicit ``perf.amp=off``).
        bf16_channels_last: the same when the step runs under bf16 autocast.
        compile: ``torch.compile`` (inductor) of the prediction.
        pass_layout: ``joint`` (one 2B pass over the CBDM views) or ``split`` (one pass per
            view), when freed host memory is kept (the CPU trainer's default).
        evidence: the measurement behind the row, for the table in the docs.
    """

    amp: str
    fp32_channels_last: bool
    bf16_channels_last: bool
    compile: bool
    pass_layout: str
    evidence: str

    def channels_last(self, bf16: bool) -> bool:
        """The NHWC choice for a step that runs in bf16 (``True``) or fp32 (``False``)."""
        return self.bf16_channels_last if bf16 else self.fp32_channels_last


# Measured step ratios (process CPU time, 1 thread, small config) are in docs/benchmarks.md.
CHOICES: dict[str, CpuChoice] = {
    "amx": CpuChoice(
        amp="bf16", fp32_channels_last=True, bf16_channels_last=False, compile=False, pass_layout="joint",
        evidence="Xeon with AMX (issue 29, 2026-12-07): bf16 joint 2.19-2.31x the reference step, bf16 channels_last "
                 "1.82x; fp32 joint 1.04-1.07x, fp32 channels_last 1.14-1.16x (two runs)"),
    "avx512-bf16": CpuChoice(
        amp="bf16", fp32_channels_last=True, bf16_channels_last=False, compile=False, pass_layout="joint",
        evidence="EPYC Zen 4 (issue 29): bf16 joint 1.67-1.80x the reference step with bf16 matmul attention "
                 "(1.49-1.57x before it), bf16 split 1.71x, bf16 channels_last 1.37x, bf16 compiled 1.38x (before); "
                 "fp32 joint 0.95-1.01x, fp32 channels_last 1.02-1.10x (three runs); with word dropout masks "
                 "(perf.dropout_masks, every CPU) bf16 joint 1.93x at 1 thread, 2.06-2.10x at 2 threads (three "
                 "runs), fp32 channels_last 1.02-1.08x (two runs; fourth session)"),
    "fp32-only": CpuChoice(
        amp="off", fp32_channels_last=True, bf16_channels_last=False, compile=False, pass_layout="joint",
        evidence="the Xeon with oneDNN and ATen held to AVX2 (issue 29, emulated): fp32 joint 0.86-1.04x the "
                 "reference step, fp32 channels_last 0.89-1.08x (two runs; 3% ahead of joint in both)"),
}


def capability_of(bf16_flag: str) -> str:
    """The capability class of a :func:`~cbdm_core.training.precision.cpu_bf16_support` answer."""
    return _BY_FLAG.get(bf16_flag, "fp32-only")


def cpu_choice(capability: str) -> CpuChoice:
    """The ``auto`` settings of ``capability`` (one of :data:`CAPABILITIES`)."""
    return CHOICES[capability]


def choice_table() -> str:
    """The table as Markdown (docs/benchmarks.md holds a copy; a test keeps them equal)."""
    lines = ["| CPU capability | amp | fp32: channels_last | bf16: channels_last | compile | CBDM views | measured |",
             "|---|---|---|---|---|---|---|"]
    for cap in CAPABILITIES:
        c = CHOICES[cap]
        lines.append(f"| `{cap}` | {c.amp} | {'on' if c.fp32_channels_last else 'off'} | "
                     f"{'on' if c.bf16_channels_last else 'off'} | "
                     f"{'on' if c.compile else 'off'} | {c.pass_layout} | {c.evidence} |")
    return "\n".join(lines)
