"""Load trained runs and checkpoints as ready-to-sample denoisers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch

from . import build
from .checkpoint import Checkpoint, RunMeta, load_checkpoint, load_state_checked, nonfinite_tensors
from .components import ModelComponents
from .config import TrainConfig, parse_train_config
from .errors import CheckpointError, UnknownComponentError, shorten
from .run_folder import resolve_checkpoint
from .schedules import NoiseSchedule
from .tensor_io import tensors_digest

__all__ = ["LoadedRun", "load_run", "load_denoiser", "resolve_checkpoint"]

# Sane bounds for sizes read from a checkpoint's metadata: they become allocation sizes.
MAX_CLASS_NAME = 200
SIZE_BOUNDS = {"image_size": (1, 4096), "channels": (1, 16), "num_classes": (0, 100_000), "cond_dim": (0, 4096)}


@dataclass
class LoadedRun:
    """A model from a checkpoint, with everything needed to sample it."""

    model: torch.nn.Module
    schedule: NoiseSchedule
    config: TrainConfig
    checkpoint: Path
    step: int
    meta: RunMeta = field(default_factory=RunMeta)
    # Content hash of the weights sampled (EMA or raw): the model's identity in a sample
    # manifest, since a retrained run (--overwrite) reuses the checkpoint path and step.
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        # A plain dict (or None) given by hand, as before RunMeta, is validated here.
        self.meta = RunMeta.parse(self.meta if self.meta is not None else {}, self.checkpoint)

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    @property
    def trained_with_label_dropout(self) -> bool:
        return self.config.objective.p_uncond > 0


def load_run(path: Union[str, Path], *, ema: bool = True, device: Union[str, torch.device] = "cpu",
             trainable: bool = False) -> LoadedRun:
    """Load a run folder or checkpoint file.

    The model comes back **frozen, in eval mode** (``requires_grad=False``, dropout off), ready
    to sample; ``trainable=True`` gives it in train mode with gradients on, to fine-tune it in
    your own loop (or use ``cbdm train --init-from``, which also restores the training setup).

    Args:
        path: run folder (latest checkpoint) or a ``.safetensors`` checkpoint.
        ema: use the EMA weights (default) instead of the raw weights.
        device: where to put the model.
        trainable: train mode with gradients instead of a frozen eval-mode model.
    """
    if not isinstance(device, torch.device):
        device = build.resolve_device(str(device))  # "cuda" without a GPU: one line, before any reading
    ckpt_path, ckpt = _load_newest(path)
    cfg = parse_train_config(ckpt.config, f"config stored in {ckpt_path}")
    meta = ckpt.meta
    sizes = checked_sizes(meta, ckpt_path)
    check_class_names(meta, sizes["num_classes"], ckpt_path)
    state = ckpt.ema if ema else ckpt.model
    what = f"{ckpt_path} ({'EMA' if ema else 'raw'} weights)"
    try:
        components = build.resolve_model_components(cfg, sizes["cond_dim"])  # the run's names, once
        schedule = build.build_schedule(cfg, components)
        # Methods add their modules before the weights load, and may change the net for sampling after.
        counts = _class_counts(meta, sizes["num_classes"], ckpt_path)
        methods = (build.build_methods(cfg, class_counts=counts, num_classes=sizes["num_classes"], schedule=schedule,
                                       components=components) if cfg.objective.methods else [])
    except UnknownComponentError as exc:  # e.g. the plugin that trained the run was uninstalled since
        raise build.explain_missing_plugin(exc, meta) from None
    _check_parameter_count(cfg, components, sizes, state, what, methods)
    model = build.build_model(cfg, **sizes, components=components)
    build.attach_methods(methods, model)
    load_state_checked(model, state, what)
    bad = nonfinite_tensors(state)
    if bad:
        raise CheckpointError(f"{what} hold NaN or inf ({bad[0]}{' ...' if len(bad) > 1 else ''})")
    for method in methods:
        method.for_sampling(model)
    model.to(device)
    if trainable:
        model.train().requires_grad_(True)
    else:
        model.eval().requires_grad_(False)
    return LoadedRun(model=model, schedule=schedule, config=cfg, checkpoint=ckpt_path, step=ckpt.step, meta=meta,
                     weights_sha256=tensors_digest(state))


def _load_newest(path: Union[str, Path], tries: int = 5) -> tuple[Path, Checkpoint]:
    """The newest checkpoint of a run folder (or the file ``path``), loaded.

    A run training with ``--keep-last 1`` removes the checkpoint just chosen once it has saved
    a newer one; that file is then gone ("not found", or unreadable mid-read): choose again.
    """
    for _ in range(tries):
        ckpt_path = resolve_checkpoint(path)
        try:
            return ckpt_path, load_checkpoint(ckpt_path)
        except CheckpointError:
            if not Path(path).is_dir() or ckpt_path.exists():
                raise  # a file given by name, or one that is there and broken: nothing to retry
    raise CheckpointError(f"{path}: its newest checkpoint was removed {tries} times while being read; the run is "
                          "being written (training with a small --keep-last?); load a copy, or try again")


def _class_counts(meta: RunMeta, num_classes: int, ckpt_path: Path) -> torch.Tensor:
    counts = meta.class_counts
    if counts is None:  # imported checkpoints may lack them; the methods only need their shape then
        return torch.ones(num_classes, dtype=torch.long)
    counts = torch.as_tensor(counts)
    if counts.shape != (num_classes,):
        raise CheckpointError(f"{ckpt_path}: class_counts lists {counts.numel()} classes, the model {num_classes}")
    return counts


def checked_sizes(meta: Union[RunMeta, dict[str, Any]], source: Union[str, Path]) -> dict[str, int]:
    """``image_size``, ``channels``, ``num_classes``, ``cond_dim`` from checkpoint metadata,
    each an integer within :data:`SIZE_BOUNDS`, or a one-line :class:`CheckpointError`."""
    meta = RunMeta.parse(meta, source)
    out = {}
    for name, (lo, hi) in SIZE_BOUNDS.items():
        value = getattr(meta, name)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise CheckpointError(f"{source}: metadata {name} = {shorten(repr(value))} is not an integer in {lo}..{hi}")
        out[name] = value
    return out


def check_class_names(meta: Union[RunMeta, dict[str, Any]], num_classes: int, source: Union[str, Path]) -> None:
    """``class_names`` in checkpoint metadata, when present: a list of ``num_classes`` strings
    of at most :data:`MAX_CLASS_NAME` characters, without path separators or NUL (they
    become folder names and grid labels), or a one-line :class:`CheckpointError`."""
    names = RunMeta.parse(meta, source).class_names
    if names is None:
        return
    if not isinstance(names, list) or (num_classes > 0 and len(names) != num_classes):
        raise CheckpointError(f"{source}: metadata class_names must list the model's {num_classes} class names, "
                              f"got {shorten(repr(names))}")
    for k, name in enumerate(names):
        if not isinstance(name, str) or len(name) > MAX_CLASS_NAME or any(c in name for c in "/\\\0"):
            raise CheckpointError(f"{source}: metadata class_names[{k}] = {shorten(repr(name))} is not a class name "
                                  f"(a string of at most {MAX_CLASS_NAME} characters without / \\ or NUL)")


def _check_parameter_count(cfg: TrainConfig, components: ModelComponents, sizes: dict[str, int],
                           state: dict[str, torch.Tensor], what: str, methods: list[Any] = ()) -> None:
    """Build the model without memory (meta device) and compare its size with the stored
    tensors, so a config that asks for a far larger model fails before allocating it."""
    schedule = build.build_schedule(cfg, components)  # small: T is bounded by the config
    spec, options = components.backbone, components.backbone_options
    try:
        with torch.device("meta"):
            probe = spec.build(options, image_size=sizes["image_size"], channels=sizes["channels"],
                               num_classes=sizes["num_classes"], schedule=schedule)
            build.attach_methods(methods, probe)
    except Exception:  # noqa: BLE001 - a backbone that cannot build on meta is checked after building
        return
    want = sum(t.numel() for t in probe.state_dict().values())
    have = sum(t.numel() for t in state.values())
    if want != have:
        # Names the mismatched tensors (raises before loading anything, since the sizes differ).
        load_state_checked(probe, state, what)
        raise CheckpointError(f"{what} do not match the model its config describes "
                              f"({have} stored values, the model needs {want})")


def load_denoiser(path: Union[str, Path], *, ema: bool = True, device: Union[str, torch.device] = "cpu"):
    """``(model, schedule)`` from a run folder or checkpoint; ``model(x_t, t, y)`` predicts the noise."""
    run = load_run(path, ema=ema, device=device)
    return run.model, run.schedule
