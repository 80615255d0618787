"""Checkpoints in safetensors: no code runs on load.

One file per checkpoint: ``model/*`` and ``ema/*`` weights, optionally
``optim/*`` (optimizer state for exact resume), and JSON metadata (format tag,
step, resolved config, dataset facts).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from .errors import CbdmError, CheckpointError
from .tensor_io import IntegrityError, load_tensors, read_tensor_metadata, save_tensors

FORMAT = "cbdm-checkpoint/1"
CKPT_RE = re.compile(r"^ckpt-(\d+)\.safetensors$")


@dataclass
class Checkpoint:
    step: int
    config: dict[str, Any]
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optim: Optional[dict[str, Any]] = None
    meta: dict[str, Any] = field(default_factory=dict)


def _flatten_optim(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim/{idx}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optim(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split("/", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` atomically to ``path``."""
    tensors: dict[str, torch.Tensor] = {}
    for prefix, sd in (("model", ckpt.model), ("ema", ckpt.ema)):
        for k, v in sd.items():
            tensors[f"{prefix}/{k}"] = v.detach().cpu().contiguous()
    metadata = {
        "format": FORMAT,
        "step": str(ckpt.step),
        "config": json.dumps(ckpt.config),
        "meta": json.dumps(ckpt.meta),
    }
    if ckpt.optim is not None:
        opt_tensors, opt_meta = _flatten_optim(ckpt.optim)
        tensors.update(opt_tensors)
        metadata["optim"] = json.dumps(opt_meta)
    save_tensors(Path(path), tensors, metadata)


def read_metadata(path: Path) -> dict[str, str]:
    try:
        return read_tensor_metadata(path)
    except CbdmError as exc:
        raise CheckpointError(str(exc)) from None


def load_checkpoint(path: Path, *, with_optim: bool = False, verify: Optional[bool] = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (content hash checked, see
    :func:`cbdm_core.tensor_io.load_tensors`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cbdm checkpoint (format tag {meta.get('format')!r})")
    try:
        tensors, _ = load_tensors(path, verify=verify)
    except IntegrityError:
        raise
    except CbdmError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        config = json.loads(meta["config"])
        extra = json.loads(meta.get("meta", "{}"))
        step = _parse_step(meta["step"])
        if not isinstance(config, dict) or not isinstance(extra, dict):
            raise ValueError("config and meta must be JSON objects")
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from None
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema/")}
    optim = None
    if with_optim and "optim" in meta:
        try:
            optim = _unflatten_optim({k: v for k, v in tensors.items() if k.startswith("optim/")},
                                     json.loads(meta["optim"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{path}: the optimizer state is malformed ({type(exc).__name__}: {exc})") from None
    return Checkpoint(step=step, config=config, model=model, ema=ema, optim=optim, meta=extra)


def read_run_meta(path: Path) -> dict[str, Any]:
    """The run metadata (``meta``) of a checkpoint without loading its tensors; ``{}`` when unreadable."""
    try:
        extra = json.loads(read_metadata(path).get("meta", "{}"))
    except (CbdmError, OSError, ValueError):
        return {}
    return extra if isinstance(extra, dict) else {}


def _parse_step(text: str) -> int:
    step = float(text) if not str(text).strip().lstrip("-").isdigit() else int(text)
    if not math.isfinite(step) or step < 0 or int(step) != step:
        raise ValueError(f"step {text!r} is not a non-negative integer")
    return int(step)


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf (one host sync in the common case)."""
    floats = {k: v for k, v in tensors.items() if v.is_floating_point() and v.numel()}
    if not floats:
        return []
    flags = torch.stack([torch.isfinite(v).all() for v in floats.values()])
    if bool(flags.all()):
        return []
    return [k for k, ok in zip(floats, flags.tolist()) if not ok]


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the complete checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = CKPT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}.safetensors"


def load_state_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module`` or refuse, naming missing, unexpected and mis-shaped tensors."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    if shapes:
        problems.append(f"wrong shapes {'; '.join(shapes[:5])}{' ...' if len(shapes) > 5 else ''}")
    if problems:
        raise CheckpointError(f"{source} does not match the model: {' | '.join(problems)}")
    module.load_state_dict(state)
