"""Which CPU kernels produced a float fixture, and whether this machine runs the same ones.

Training a network for a few steps is bit-reproducible only where the float kernels are
the same: the same torch and oneDNN/MKL build choosing the same code path on the same
kind of CPU. MKL and oneDNN dispatch on the CPU vendor and model as well as on the
instruction set (an AMD Zen 4 and an Intel Xeon both report torch capability
``AVX512``, yet round some sums differently), so "same instruction set" is not enough.

A fixture records the fingerprint of the machine that wrote it (a JSON file beside it).
Tests compare their results with the fixture EXACTLY when every recorded field matches
this machine, and within a stated tolerance otherwise. Fields a fixture did not record
are not compared, but the core ones (:data:`REQUIRED`) must be there for exactness.

Record a fingerprint when fixtures are (re)written::

    python -m tests.kernel_fingerprint > tests/fixtures/NAME-machine.json
"""

from __future__ import annotations

import json
import platform
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

# Flags whose presence changes which kernels MKL/oneDNN pick for fp32/bf16 convolutions and matmuls.
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")

# Without these a match says too little to promise bit-identity.
REQUIRED = ("vendor", "model_name", "capability", "torch", "onednn")


@dataclass(frozen=True)
class KernelFingerprint:
    """What decides the float kernels of a CPU run. ``None`` (or an absent flag) = not recorded."""

    vendor: Optional[str] = None
    model_name: Optional[str] = None
    cpu_family: Optional[str] = None
    cpu_model: Optional[str] = None
    capability: Optional[str] = None
    torch: Optional[str] = None
    onednn: Optional[str] = None
    mkl: Optional[str] = None
    flags: dict[str, bool] = field(default_factory=dict)
    note: str = ""

    @classmethod
    def from_json(cls, path: Path) -> "KernelFingerprint":
        data = json.loads(Path(path).read_text())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class Comparison:
    """How to compare with a fixture: ``exact`` or ``tolerant``, and why."""

    mode: str
    reasons: tuple[str, ...]

    @property
    def exact(self) -> bool:
        return self.mode == "exact"

    def describe(self) -> str:
        return self.mode if self.exact else f"{self.mode} ({'; '.join(self.reasons)})"


def compare(recorded: KernelFingerprint, here: KernelFingerprint) -> Comparison:
    """``exact`` when every field the fixture recorded matches ``here`` and the required ones are recorded."""
    reasons = [f"{name} not recorded with the fixture" for name in REQUIRED if getattr(recorded, name) is None]
    for name in KernelFingerprint.__dataclass_fields__:
        if name in ("flags", "note"):
            continue
        want, got = getattr(recorded, name), getattr(here, name)
        if want is not None and want != got:
            reasons.append(f"{name}: fixture {want!r}, here {got!r}")
    for flag, want in sorted(recorded.flags.items()):
        got = here.flags.get(flag)
        if got is not None and got != want:
            reasons.append(f"cpu flag {flag}: fixture {'on' if want else 'off'}, here {'on' if got else 'off'}")
        elif got is None:
            reasons.append(f"cpu flag {flag}: unknown here")
    return Comparison("tolerant" if reasons else "exact", tuple(reasons))


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _library_versions() -> tuple[Optional[str], Optional[str]]:
    """oneDNN and MKL versions from torch's build configuration."""
    try:
        config = torch.__config__.show()
    except Exception:  # private-ish API; absent on exotic builds
        return None, None
    onednn = re.search(r"MKL-DNN v([\w.]+)", config) or re.search(r"oneDNN v([\w.]+)", config)
    mkl = re.search(r"Math Kernel Library Version ([\d.]+)", config)
    return (onednn.group(1) if onednn else None), (mkl.group(1) if mkl else None)


def current() -> KernelFingerprint:
    """This machine's fingerprint."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    onednn, mkl = _library_versions()
    return KernelFingerprint(
        vendor=info.get("vendor_id") or platform.processor() or None,
        model_name=info.get("model name") or platform.processor() or None,
        cpu_family=info.get("cpu family"),
        cpu_model=info.get("model"),
        capability=torch.backends.cpu.get_cpu_capability(),
        torch=torch.__version__,
        onednn=onednn,
        mkl=mkl,
        flags={f: f in flags for f in KERNEL_FLAGS} if flags else {},
    )


if __name__ == "__main__":
    sys.stdout.write(current().to_json())
