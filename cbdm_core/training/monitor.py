"""What a training run reports while it runs: plain progress lines, memory, TensorBoard."""

from __future__ import annotations

import importlib.util
import math
import resource
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import CbdmError

# Terms that equal another term in value and differ only in their gradient: logged once.
# CBDM's commitment is the regulariser with the stop-gradient on the other branch.
SAME_VALUE_AS = {"commitment": "regularizer"}

# Record keys that are bookkeeping, not loss terms.
BOOKKEEPING = ("step", "time", "elapsed", "lr", "images_per_sec", "grad_norm", "memory_gb", "skipped_steps")


def logged_terms(terms: dict[str, Any]) -> dict[str, Any]:
    """``terms`` without the duplicates of :data:`SAME_VALUE_AS`."""
    return {k: v for k, v in terms.items() if not (k in SAME_VALUE_AS and SAME_VALUE_AS[k] in terms)}


def window_state(sums: dict[str, Any], count: int) -> dict[str, Any]:
    """The loss sums of a logging window not yet logged, as checkpoint metadata (plain floats,
    their dtypes, and how many steps they sum), so a resume inside the window logs the same
    means as the run that was never interrupted. ``{}`` when a sum is not finite."""
    values = {k: float(v) for k, v in sums.items()}
    if not all(math.isfinite(v) for v in values.values()):
        return {}
    dtypes = {k: str(v.dtype).removeprefix("torch.") for k, v in sums.items() if isinstance(v, torch.Tensor)}
    return {"count": int(count), "sums": values, "dtypes": dtypes}


def restore_window(state: Any, device: torch.device) -> tuple[dict[str, Any], int]:
    """``(sums, count)`` saved by :func:`window_state`; ``({}, 0)`` for anything else (an older
    checkpoint, or metadata that does not have that shape)."""
    try:
        count, sums, dtypes = int(state["count"]), state["sums"], state.get("dtypes", {})
        restored = {}
        for k, v in sums.items():
            dtype = getattr(torch, str(dtypes.get(k, "float32")), None)
            if not isinstance(k, str) or not isinstance(dtype, torch.dtype) or not math.isfinite(float(v)):
                return {}, 0
            restored[k] = torch.tensor(float(v), dtype=dtype, device=device)
    except (TypeError, KeyError, ValueError, AttributeError, OverflowError):
        return {}, 0
    return (restored, count) if count > 0 else ({}, 0)


def memory_gb(device: torch.device) -> float:
    """Peak memory of this process in GB: allocated CUDA memory on a GPU, resident memory otherwise."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    seconds = max(int(seconds), 0)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def progress_line(record: dict[str, Any], total_steps: int, eta_seconds: Optional[float]) -> str:
    """One plain line for logs without a terminal (nohup, SLURM): step, loss, img/s, ETA, memory."""
    parts = [f"step {record['step']}/{total_steps}"]
    if "total" in record:
        parts.append(f"loss {record['total']:.4f}")
        parts.extend(f"{k} {v:.4g}" for k, v in record.items() if k not in BOOKKEEPING and k != "total")
    if record.get("skipped_steps"):
        parts.append(f"{record['skipped_steps']} skipped")
    parts.append(f"{record.get('images_per_sec', 0.0):.1f} img/s")
    parts.append(f"eta {format_duration(eta_seconds)}" if eta_seconds is not None else "eta --")
    if "memory_gb" in record:
        parts.append(f"mem {record['memory_gb']:.2f} GB")
    return "  ".join(parts)


def is_evaluation(record: dict[str, Any]) -> bool:
    """Whether ``record`` is a training-time evaluation (``eval_*`` values), not a loss interval."""
    return "eval_seconds" in record


def evaluation_line(record: dict[str, Any]) -> str:
    """One plain line for an evaluation record: ``eval step 400: fid 12.3  kid 0.0101  (500 samples, 8.2 s)``."""
    values = [f"{k[len('eval_'):]} {'--' if v is None else format(v, '.4g')}" for k, v in record.items()
              if k.startswith("eval_") and k not in ("eval_seconds", "eval_num")]
    return (f"eval step {record['step']}: {'  '.join(values)}  "
            f"({record.get('eval_num', '?')} samples, {record.get('eval_seconds', 0.0):.1f} s)")


def check_loggers(names: list[str]) -> None:
    """Fail before training when a requested logger's package is missing (tensorboard, wandb)."""
    for name in names:
        if name in ("tensorboard", "wandb") and importlib.util.find_spec(name) is None:
            raise CbdmError(f"--log {name} needs the {name} package: pip install 'cbdm[{name}]' "
                            f"(or pip install {name})")


class TensorBoardLog:
    """Writes every numeric field of each metrics record as a scalar under ``<run>/tensorboard``:
    ``train/<term>``, ``run/<bookkeeping>`` and ``eval/<metric>``."""

    def __init__(self, log_dir: Path):
        check_loggers(["tensorboard"])
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key in ("step", "time") or not isinstance(value, (int, float)):
                continue
            if key.startswith("eval_"):  # eval/fid, eval/kid, eval/seconds, ...
                group, key = "eval", key[len("eval_"):]
            else:
                group = "train" if key not in BOOKKEEPING else "run"
            self.writer.add_scalar(f"{group}/{key}", float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
