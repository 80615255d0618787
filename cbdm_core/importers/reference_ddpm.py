"""Import checkpoints of the reference pytorch-ddpm / CBDM U-Net into a cbdm run folder.

The reference file is a torch pickle, read with ``weights_only=True`` only (no code
runs). Its key layout matches :mod:`cbdm_core.nets.unet` except for:

* ``time_embedding.timembedding.{0,1,3}``: the frozen sinusoidal table (dropped;
  this U-Net computes it), then Linear, Swish, Linear -> ``time_embedding.{0,2}``;
* ``label_embedding.weight``: ``num_class`` rows, no null row -> a zero row appended
  (the reference's unconditional pass adds no label embedding, which equals zero);
* ``augm_embedding.weight`` (ADA conditioning) -> ``cond_embedding.weight``.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .. import locks
from ..checkpoint import FORMAT, Checkpoint, RunMeta, load_state_checked, read_metadata, save_checkpoint
from ..config import TrainConfig, parse_train_config
from ..errors import CbdmError, CheckpointError
from ..nets.unet import timestep_embedding
from ..run_folder import RunFolder

_TABLE = "time_embedding.timembedding.0.weight"
_TIME_MAP = {"time_embedding.timembedding.1.": "time_embedding.0.",
             "time_embedding.timembedding.3.": "time_embedding.2."}
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_DOWN_RE = re.compile(r"^downblocks\.(\d+)\.")

StateDict = dict[str, torch.Tensor]


@dataclass
class ReferenceCheckpoint:
    """The weights of a reference checkpoint: raw (``net``), EMA (``ema``) and the step."""

    net: StateDict
    ema: StateDict
    step: int
    has_ema: bool
    source: Path


@dataclass
class ReferenceArch:
    """U-Net options read off a reference state dict. ``T`` is None without the frozen table."""

    ch: int
    channels: int
    ch_mult: list[int]
    attn: list[int]
    num_res_blocks: int
    num_classes: int
    cond_dim: int
    T: Optional[int] = None


@dataclass
class ImportOptions:
    """User-given values. ``None`` for an inferable field means "take the checkpoint's";
    a given value that differs from the checkpoint is an error."""

    ch: Optional[int] = None
    channels: Optional[int] = None
    ch_mult: Optional[list[int]] = None
    attn: Optional[list[int]] = None
    num_res_blocks: Optional[int] = None
    num_classes: Optional[int] = None
    cond_dim: Optional[int] = None
    T: Optional[int] = None
    image_size: int = 32
    beta_1: float = 1e-4
    beta_T: float = 0.02
    dropout: float = 0.1
    num_groups: int = 32
    dataset: str = "imported"
    class_counts: Optional[list[int]] = None
    class_names: Optional[list[str]] = None


@dataclass
class ImportResult:
    run_dir: Path
    checkpoint: Path
    config: TrainConfig
    arch: ReferenceArch
    step: int
    meta: RunMeta = field(default_factory=RunMeta)


def _is_cbdm_checkpoint(path: Path) -> bool:
    try:
        return read_metadata(path).get("format") == FORMAT
    except (CbdmError, OSError):
        return False  # not a safetensors file: a torch checkpoint, as expected


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; anything it refuses is refused here too."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"WeightsUnpickler error:\s*(.+)", text)
        detail = f" ({found.group(1).strip()})" if found else ""
        raise CheckpointError(
            f"refusing to unpickle {path}: it is not loadable with weights_only=True{detail}; only tensors "
            "and plain containers are accepted") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot read {path} as a torch checkpoint: {first or type(exc).__name__}") from None


def _strip_wrappers(sd: StateDict) -> StateDict:
    """Drop a ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefix shared by all keys."""
    changed = True
    while changed and sd:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
    return sd


def _as_state_dict(obj: Any, what: str, path: Path) -> StateDict:
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: {what} is not a state dict (got {type(obj).__name__})")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(f"{path}: {what} holds non-tensor entries: {', '.join(bad[:5])}")
    return _strip_wrappers(dict(obj))


def _step_of(value: Any, path: Path) -> int:
    if torch.is_tensor(value) and value.numel() == 1:
        value = value.item()
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
            or int(value) != value):
        raise CheckpointError(f"{path}: 'step' is not a non-negative integer ({value!r})")
    return int(value)


def load_reference_checkpoint(path: Union[str, Path]) -> ReferenceCheckpoint:
    """Read a reference checkpoint (``{'net_model', 'ema_model', 'step', ...}``) or a bare state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if _is_cbdm_checkpoint(path):
        raise CheckpointError(f"{path} is a cbdm checkpoint already: sample it directly (cbdm sample {path}) or "
                              f"start a run from it (cbdm train --init-from {path})")
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    if "net_model" in obj:
        net = _as_state_dict(obj["net_model"], "'net_model'", path)
        has_ema = obj.get("ema_model") is not None
        ema = _as_state_dict(obj["ema_model"], "'ema_model'", path) if has_ema else net
        step = _step_of(obj.get("step", 0), path)
    elif obj and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        net = _strip_wrappers(dict(obj))
        if "head.weight" not in net:
            raise CheckpointError(f"{path} is a state dict without 'head.weight': not a DDPM U-Net")
        ema, has_ema, step = net, False, 0
    else:
        keys = ", ".join(sorted(map(str, obj))[:8]) or "none"
        raise CheckpointError(f"{path} has no 'net_model' entry and is not a bare state dict (keys: {keys})")
    if set(ema) != set(net) or any(tuple(ema[k].shape) != tuple(net[k].shape) for k in net):
        diff = sorted(set(ema) ^ set(net)) or [k for k in net if tuple(ema[k].shape) != tuple(net[k].shape)]
        raise CheckpointError(f"{path}: 'net_model' and 'ema_model' differ in layout ({', '.join(diff[:5])})")
    return ReferenceCheckpoint(net=net, ema=ema, step=step, has_ema=has_ema, source=path)


def _shape(sd: StateDict, key: str, ndim: int) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"not a DDPM U-Net state dict: '{key}' is missing")
    shape = tuple(sd[key].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"'{key}' has shape {shape}, expected {ndim} dimensions")
    return shape


def infer_architecture(sd: StateDict) -> ReferenceArch:
    """Read ch, channels, ch_mult, attn, num_res_blocks, classes, cond_dim and T off a reference state dict."""
    ch, channels = _shape(sd, "head.weight", 4)[:2]
    indices = sorted({int(m.group(1)) for k in sd if (m := _DOWN_RE.match(k))})
    if not indices or indices != list(range(len(indices))):
        raise CheckpointError(f"not a DDPM U-Net state dict: down-block indices {indices[:10]} are not 0..n-1")
    levels: list[list[tuple[int, bool]]] = [[]]  # per level: (out channels, has attention) of each ResBlock
    for n in indices:
        if f"downblocks.{n}.main.weight" in sd:
            if not levels[-1]:
                raise CheckpointError(f"downblocks.{n} is a DownSample with no residual block before it")
            levels.append([])
        else:
            out = _shape(sd, f"downblocks.{n}.block1.2.weight", 4)[0]
            levels[-1].append((out, any(k.startswith(f"downblocks.{n}.attn.") for k in sd)))
    if not levels[-1]:
        raise CheckpointError("the down path ends with a DownSample: not a DDPM U-Net")
    counts = {len(level) for level in levels}
    if len(counts) != 1:
        raise CheckpointError(f"levels have different numbers of residual blocks {[len(l) for l in levels]}")
    ch_mult, attn = [], []
    for i, level in enumerate(levels):
        outs, attns = {o for o, _ in level}, {a for _, a in level}
        if len(outs) != 1 or len(attns) != 1:
            raise CheckpointError(f"level {i} mixes block widths {sorted(outs)} or attention settings")
        out = outs.pop()
        if out % ch:
            raise CheckpointError(f"level {i} width {out} is not a multiple of ch={ch}")
        ch_mult.append(out // ch)
        if attns.pop():
            attn.append(i)
    num_classes = _shape(sd, "label_embedding.weight", 2)[0] if "label_embedding.weight" in sd else 0
    cond_dim = _shape(sd, "augm_embedding.weight", 2)[1] if "augm_embedding.weight" in sd else 0
    T = _shape(sd, _TABLE, 2)[0] if _TABLE in sd else None
    return ReferenceArch(ch=ch, channels=channels, ch_mult=ch_mult, attn=attn, num_res_blocks=counts.pop(),
                         num_classes=num_classes, cond_dim=cond_dim, T=T)


def resolve_arch(arch: ReferenceArch, given: ImportOptions) -> ReferenceArch:
    """``arch`` with given values filled in; a given value that contradicts the checkpoint is an error."""
    wrong = []
    resolved = {}
    for name in ("ch", "channels", "ch_mult", "attn", "num_res_blocks", "num_classes", "cond_dim", "T"):
        have, want = getattr(arch, name), getattr(given, name)
        if want is not None and name in ("ch_mult", "attn"):
            want = sorted(set(want)) if name == "attn" else list(want)
        if want is not None and have is not None and want != have:
            flag = "--" + name.replace("_", "-")
            show = (lambda v: ",".join(map(str, v)) or "(none)") if isinstance(have, list) else str
            wrong.append(f"{flag} {show(want)} (checkpoint: {show(have)})")
        resolved[name] = have if have is not None else want
    if wrong:
        raise CheckpointError(f"the given options do not match the checkpoint: {'; '.join(wrong)}")
    return ReferenceArch(**resolved)


def convert_state_dict(sd: StateDict, arch: ReferenceArch) -> StateDict:
    """Reference key names and shapes -> this project's U-Net (float32 copies)."""
    tdim = 4 * arch.ch
    out: StateDict = {}
    unknown = []
    for key, value in sd.items():
        value = value.detach().to("cpu", torch.float32 if value.is_floating_point() else value.dtype).clone()
        if key == _TABLE:
            _check_time_table(value, arch.ch)
            continue
        prefix = next((p for p in _TIME_MAP if key.startswith(p)), None)
        if prefix is not None:
            out[_TIME_MAP[prefix] + key[len(prefix):]] = value
        elif key.startswith("time_embedding."):
            unknown.append(key)
        elif key == "label_embedding.weight":
            out[key] = torch.cat([value, value.new_zeros(1, value.shape[1])])
        elif key == "augm_embedding.weight":
            out["cond_embedding.weight"] = value
        else:
            out[key] = value
    if unknown:
        raise CheckpointError(f"unknown time-embedding keys {', '.join(unknown[:5])}")
    out.setdefault("label_embedding.weight", torch.zeros(1, tdim))
    return out


def _check_time_table(table: torch.Tensor, ch: int) -> None:
    if table.shape[1] != ch:
        raise CheckpointError(f"time-embedding table width {table.shape[1]} differs from ch={ch}")
    expected = timestep_embedding(torch.arange(table.shape[0]), ch)
    err = (table - expected).abs().max().item()
    if err > 1e-4:
        raise CheckpointError(f"the frozen time-embedding table is not the DDPM sinusoidal table (max diff {err:.2g})")


def _class_facts(given: ImportOptions, num_classes: int) -> tuple[list[int], list[str]]:
    counts = [1] * num_classes if given.class_counts is None else [int(c) for c in given.class_counts]
    names = [str(k) for k in range(num_classes)] if given.class_names is None else [str(n) for n in given.class_names]
    if len(counts) != num_classes:
        raise CbdmError(f"--class-counts has {len(counts)} values but the checkpoint has {num_classes} classes")
    if any(c < 0 for c in counts):
        raise CbdmError("--class-counts must be non-negative")
    if len(names) != num_classes:
        raise CbdmError(f"--class-names has {len(names)} names but the checkpoint has {num_classes} classes")
    return counts, names


def build_config(arch: ReferenceArch, given: ImportOptions) -> TrainConfig:
    """The TrainConfig of an imported run (schedule and architecture; training fields are defaults)."""
    data = {
        "model": {"backbone": "unet", "options": {
            "ch": arch.ch, "ch_mult": arch.ch_mult, "attn": arch.attn, "num_res_blocks": arch.num_res_blocks,
            "dropout": given.dropout, "num_groups": given.num_groups}},
        "diffusion": {"schedule": "linear", "T": arch.T, "beta_1": given.beta_1, "beta_T": given.beta_T},
        "data": {"dataset": given.dataset},
    }
    return parse_train_config(data, "imported config")


def _check_image_size(size: int) -> None:
    """``--image-size`` within what a run may hold (:data:`cbdm_core.run.SIZE_BOUNDS`)."""
    from ..run import SIZE_BOUNDS

    lo, hi = SIZE_BOUNDS["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) or not lo <= size <= hi:
        raise CbdmError(f"--image-size must be an integer in {lo}..{hi}, got {size!r}")


def _check_dest(dest: Path, overwrite: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise CbdmError(f"{dest} exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise CbdmError(f"{dest} exists and is not empty; pass --overwrite to write the import there")


def import_reference_checkpoint(src: Union[str, Path], dest: Union[str, Path], options: Optional[ImportOptions] = None,
                                *, overwrite: bool = False) -> ImportResult:
    """Convert a reference checkpoint ``src`` into the run folder ``dest`` (``cbdm sample dest`` then works).

    With ``overwrite``, other ``ckpt-*.safetensors`` in ``dest/checkpoints`` are removed so the
    import is the run's latest checkpoint; other files in ``dest`` are left alone.
    """
    from ..build import build_model
    from ..run import check_class_names, checked_sizes

    src, dest = Path(src), Path(dest)
    given = options or ImportOptions()
    _check_image_size(given.image_size)
    _check_dest(dest, overwrite)
    ref = load_reference_checkpoint(src)
    arch = resolve_arch(infer_architecture(ref.net), given)
    if arch.T is None:
        arch.T = 1000
    counts, names = _class_facts(given, arch.num_classes)
    cfg = build_config(arch, given)
    model = build_model(cfg, image_size=given.image_size, channels=arch.channels, num_classes=arch.num_classes,
                        cond_dim=arch.cond_dim)
    net = convert_state_dict(ref.net, arch)
    load_state_checked(model, net, f"{src} ('net_model')")
    ema = convert_state_dict(ref.ema, arch) if ref.has_ema else {k: v.clone() for k, v in net.items()}
    if ref.has_ema:
        load_state_checked(model, ema, f"{src} ('ema_model')")
    meta = {"num_classes": arch.num_classes, "image_size": given.image_size, "channels": arch.channels,
            "class_counts": counts, "class_names": names, "dataset": given.dataset, "cond_dim": arch.cond_dim,
            "imported_from": src.name}
    meta = RunMeta.parse(meta, f"import of {src}")
    # What `load_run` will check, checked before anything is written: never a run nothing loads.
    checked_sizes(meta, f"import of {src}")
    check_class_names(meta, arch.num_classes, f"import of {src}")
    parse_train_config(cfg.model_dump(mode="json"), f"import of {src}")
    folder = RunFolder(dest)
    path = folder.checkpoint(ref.step)
    with locks.folder_lock(dest, "run folder"):
        save_checkpoint(path, Checkpoint(step=ref.step, config=cfg.model_dump(mode="json"), model=net, ema=ema,
                                         meta=meta))
        folder.write_config(cfg)
        for _, old in folder.list_checkpoints():
            if old != path:
                old.unlink(missing_ok=True)
    return ImportResult(run_dir=dest, checkpoint=path, config=cfg, arch=arch, step=ref.step, meta=meta)
