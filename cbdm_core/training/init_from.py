"""Start training from a pre-trained checkpoint (fine-tuning, paper Table 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Collection, Union

import torch

from ..checkpoint import load_checkpoint
from ..errors import CheckpointError
from ..run_folder import resolve_checkpoint

# Tensors that may legitimately differ between the pre-trained and the new model.
LABEL_KEYS = ("label_embedding.weight",)
OPTIONAL_PREFIXES = ("cond_embedding.",)


def _optional(name: str) -> bool:
    # Wrapped backbones (EDM) prefix the inner network's names, e.g. "inner.cond_embedding.".
    return any(name.startswith(p) or f".{p}" in name for p in OPTIONAL_PREFIXES)


def init_from_checkpoint(model: torch.nn.Module, path: Union[str, Path], *, use_ema: bool = True,
                         fresh_ok: Collection[str] = ()) -> list[str]:
    """Copy pre-trained weights into ``model``.

    The class embedding is carried over when the number of classes matches and
    re-initialised (null row kept at zero) when it differs, e.g. CIFAR-100 -> CIFAR-10-LT.
    An augmentation-conditioning layer missing from the source starts at zero, so the
    new model initially ignores it. Tensors named in ``fresh_ok`` (modules a training method
    attached) keep their fresh initialisation when the source lacks them. Every other tensor
    must match by name and shape.

    Returns:
        the names of the tensors that were not copied.
    """
    ckpt_path = resolve_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    source = ckpt.ema if use_ema else ckpt.model
    own = model.state_dict()
    fresh: list[str] = []
    problems: list[str] = []
    for name, tensor in own.items():
        if name not in source:
            if name in fresh_ok:
                fresh.append(name)
                continue
            if _optional(name):
                with torch.no_grad():
                    tensor.zero_()
                fresh.append(name)
                continue
            problems.append(f"missing {name}")
            continue
        src = source[name]
        if tuple(src.shape) != tuple(tensor.shape):
            if name.endswith(LABEL_KEYS):
                fresh.append(name)
                continue
            problems.append(f"{name} {tuple(src.shape)} vs {tuple(tensor.shape)}")
            continue
        with torch.no_grad():
            tensor.copy_(src)
    unexpected = [k for k in source if k not in own and not _optional(k)]
    problems += [f"unexpected {k}" for k in unexpected]
    if problems:
        shown = "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else "")
        raise CheckpointError(f"--init-from {ckpt_path}: architecture does not match: {shown}")
    return fresh
