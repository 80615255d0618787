"""Checkpoints in safetensors: no code runs on load.

One file per checkpoint: ``model/*`` and ``ema/*`` weights, optionally
``optim/*`` (optimizer state for exact resume), and JSON metadata (format tag,
step, resolved config, and the run metadata :class:`RunMeta`: dataset facts).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from pydantic import BaseModel, ConfigDict, PrivateAttr, StrictInt, ValidationError

from .errors import CbdmError, CheckpointError, shorten
from .tensor_io import IntegrityError, load_tensors, read_tensor_metadata, save_tensors

FORMAT = "cbdm-checkpoint/1"
CKPT_RE = re.compile(r"^ckpt-(\d+)\.safetensors$")


# What each typed key must hold, for the one-line refusal of a wrong type (the sizes' bounds
# are checked by ``run.checked_sizes``, where the sizes are used).
_WHAT = {"num_classes": "an integer", "image_size": "an integer", "channels": "an integer",
         "cond_dim": "an integer", "class_counts": "a list of integers", "class_names": "a list of strings",
         "dataset": "a string", "speed": "an object", "plugins": "an object of strings"}


class RunMeta(BaseModel):
    """The run metadata stored with every checkpoint (JSON under the ``meta`` key).

    Every field is optional: older checkpoints and imported runs lack some (``load_run``
    refuses a run without its sizes, with one line). Keys this model does not know
    (``imported_from``, a plugin's own) are kept and written back. The file holds exactly
    the keys given, in the order given: :meth:`to_dict` is the dict it was made from.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    num_classes: Optional[StrictInt] = None
    image_size: Optional[StrictInt] = None
    channels: Optional[StrictInt] = None
    class_counts: Optional[list[StrictInt]] = None
    class_names: Optional[list[str]] = None
    dataset: Optional[str] = None
    # Extra conditioning channels of the augmentation (EDM's augment labels); 0 when absent.
    cond_dim: StrictInt = 0
    speed: Optional[dict[str, Any]] = None  # the resolved precision choices (training/precision.py)
    plugins: Optional[dict[str, str]] = None  # {"kind:name": "distribution version"}
    log_window: Any = None  # the logging window at the save (training/monitor.py reads any shape)

    _order: tuple[str, ...] = PrivateAttr(default=())

    @classmethod
    def parse(cls, data: Union["RunMeta", dict[str, Any]], source: Union[str, Path]) -> "RunMeta":
        """``data`` validated, or a one-line :class:`CheckpointError` naming ``source`` and the key."""
        if isinstance(data, RunMeta):
            return data
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: metadata must be a JSON object, got {type(data).__name__}")
        try:
            meta = cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            top = str(err["loc"][0]) if err["loc"] else ""
            value = data.get(top, err.get("input"))
            raise CheckpointError(f"{source}: metadata {top or key} = {shorten(repr(value))} is not "
                                  f"{_WHAT.get(top, 'valid')} ({key}: {err['msg']})") from None
        meta._order = tuple(str(k) for k in data)
        return meta

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict written to the file: the keys given, in their order, then keys set since."""
        data = self.model_dump(exclude_unset=True)
        order = [k for k in self._order if k in data] + [k for k in data if k not in self._order]
        return {k: data[k] for k in order}

    def updated(self, **changes: Any) -> "RunMeta":
        """A copy with ``changes`` (validated), keeping the key order."""
        return RunMeta.parse({**self.to_dict(), **changes}, "run metadata")

    # Mapping-style reads of the former plain-dict metadata, kept for plugins written against it.
    def get(self, key: str, default: Any = None) -> Any:
        warnings.warn(f"RunMeta.get({key!r}) is deprecated; read the attribute (meta.{key})",
                      DeprecationWarning, stacklevel=2)
        return self.to_dict().get(key, default)

    def __getitem__(self, key: str) -> Any:
        warnings.warn(f"RunMeta[{key!r}] is deprecated; read the attribute (meta.{key})",
                      DeprecationWarning, stacklevel=2)
        return self.to_dict()[key]


@dataclass
class Checkpoint:
    """One checkpoint's contents; ``meta`` may be given as a plain dict (validated into a
    :class:`RunMeta` here, a wrong type being a one-line :class:`CheckpointError`)."""

    step: int
    config: dict[str, Any]
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optim: Optional[dict[str, Any]] = None
    meta: RunMeta = field(default_factory=RunMeta)

    def __post_init__(self) -> None:
        # Writers (the trainer, the importers) pass a plain dict: validated here, once.
        self.meta = RunMeta.parse(self.meta, "checkpoint metadata")


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
        "meta": json.dumps(ckpt.meta.to_dict()),
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
    return Checkpoint(step=step, config=config, model=model, ema=ema, optim=optim, meta=RunMeta.parse(extra, path))


def read_run_meta(path: Path) -> RunMeta:
    """The run metadata (``meta``) of a checkpoint without loading its tensors; empty when
    unreadable or malformed (its readers only use it to explain another error)."""
    try:
        return RunMeta.parse(json.loads(read_metadata(path).get("meta", "{}")), path)
    except (CbdmError, OSError, ValueError):
        return RunMeta()


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
