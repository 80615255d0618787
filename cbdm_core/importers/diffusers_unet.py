"""Import a diffusers ``UNet2DModel`` folder (class embeddings included) into a cbdm run folder.

Reads ``unet/config.json`` + ``unet/diffusion_pytorch_model.safetensors`` (safetensors only: no
pickle runs) and ``scheduler/scheduler_config.json``; needs no diffusers install. The network must
be one :mod:`cbdm_core.exporters.unet_mapping` maps exactly (the config is rebuilt from the
inferred U-Net options and compared key by key). The last class-embedding row is the null label
and must be zero (cbdm keeps it at zero); ``append_null`` instead treats every row as a class
and appends a zero null row. ``cbdm.json`` (written by ``cbdm export``) restores class names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .. import locks
from ..checkpoint import Checkpoint, RunMeta, load_state_checked, save_checkpoint
from ..config import TrainConfig, parse_train_config
from ..errors import CbdmError, CheckpointError
from ..exporters.unet_mapping import diffusers_config, from_diffusers
from ..nets.unet import UNetOptions
from ..run_folder import RunFolder
from .reference_ddpm import _check_dest

WEIGHTS = "diffusion_pytorch_model.safetensors"


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path} not found: not a diffusers {what}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def options_from_config(cfg: dict[str, Any]) -> tuple[UNetOptions, dict[str, int]]:
    """U-Net options and sizes of a ``UNet2DModel`` config; an option that does not map is an error."""
    widths, down = list(cfg.get("block_out_channels") or []), list(cfg.get("down_block_types") or [])
    if not widths or len(down) != len(widths) or not cfg.get("num_class_embeds"):
        raise CbdmError("the UNet2DModel needs block_out_channels, matching down_block_types and num_class_embeds")
    ch = int(widths[0])
    if any(w % ch for w in widths):
        raise CbdmError(f"block_out_channels {widths} are not multiples of the first ({ch})")
    opts = UNetOptions(ch=ch, ch_mult=[w // ch for w in widths],
                       attn=[i for i, t in enumerate(down) if t == "AttnDownBlock2D"],
                       num_res_blocks=int(cfg.get("layers_per_block", 2)), dropout=float(cfg.get("dropout", 0.0)),
                       num_groups=int(cfg.get("norm_num_groups", 32)))
    size = cfg.get("sample_size")
    if isinstance(size, list):
        if len(set(size)) != 1:
            raise CbdmError(f"sample_size {size}: cbdm models square images")
        size = size[0]
    sizes = {"image_size": int(size or 32), "channels": int(cfg.get("in_channels", 3)),
             "num_classes": int(cfg["num_class_embeds"]) - 1}
    if int(cfg.get("out_channels", sizes["channels"])) != sizes["channels"]:
        raise CbdmError("in_channels and out_channels differ: not an epsilon-prediction image U-Net")
    return opts, sizes


def check_config(cfg: dict[str, Any], opts: UNetOptions, sizes: dict[str, int]) -> None:
    """Every key cbdm's mapping fixes must have the value that makes the networks equal."""
    want = diffusers_config(opts, **sizes)
    bad = []
    for key, value in want.items():
        have = cfg.get(key)
        if isinstance(have, tuple):
            have = list(have)
        if key in ("sample_size", "dropout"):
            continue
        if have != value and not (key == "mid_block_scale_factor" and have in (1, 1.0)):
            bad.append(f"{key}={have!r} (needs {value!r})")
    if bad:
        raise CbdmError("this UNet2DModel has options cbdm's U-Net cannot reproduce exactly: " + "; ".join(bad[:6]))


def _schedule(folder: Path) -> dict[str, Any]:
    """The ``diffusion`` config section from ``scheduler/scheduler_config.json``."""
    sc = _read_json(folder / "scheduler" / "scheduler_config.json", "scheduler folder")
    if sc.get("prediction_type", "epsilon") != "epsilon":
        raise CbdmError(f"prediction_type {sc.get('prediction_type')!r}: cbdm trains epsilon prediction only")
    if sc.get("trained_betas") is not None:
        raise CbdmError("the scheduler lists trained_betas; cbdm imports named schedules only "
                        "(linear, squaredcos_cap_v2)")
    T, kind = int(sc.get("num_train_timesteps", 1000)), sc.get("beta_schedule", "linear")
    if kind == "linear":
        return {"schedule": "linear", "T": T, "beta_1": float(sc.get("beta_start", 1e-4)),
                "beta_T": float(sc.get("beta_end", 0.02))}
    if kind == "squaredcos_cap_v2":
        return {"schedule": "cosine", "T": T}
    raise CbdmError(f"beta_schedule {kind!r} has no cbdm schedule; linear and squaredcos_cap_v2 import")


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = folder / "unet" / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path} not found (only safetensors weights are imported, never pickles)")
    try:
        return {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"cannot read {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def _null_row(state: dict[str, torch.Tensor], sizes: dict[str, int], append_null: bool) -> None:
    emb = state["class_embedding.weight"]
    if append_null:
        state["class_embedding.weight"] = torch.cat([emb, emb.new_zeros(1, emb.shape[1])])
        sizes["num_classes"] += 1
    elif emb[-1].abs().max().item() != 0.0:
        raise CbdmError("the last class-embedding row (the null label) is not zero; cbdm keeps the null label's "
                        "embedding at zero. Pass --append-null to treat every row as a class and add a zero null row")


def import_diffusers_unet(src: Union[str, Path], dest: Union[str, Path], *, append_null: bool = False,
                          dataset: Optional[str] = None, overwrite: bool = False) -> tuple[Path, TrainConfig, RunMeta]:
    """Convert the diffusers folder ``src`` into the run folder ``dest``; returns (checkpoint, config, meta)."""
    src, dest = Path(src), Path(dest)
    _check_dest(dest, overwrite)
    ucfg = _read_json(src / "unet" / "config.json", "UNet2DModel folder")
    if ucfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise CbdmError(f"{src / 'unet'} holds a {ucfg.get('_class_name')}, not a UNet2DModel")
    opts, sizes = options_from_config(ucfg)
    check_config(ucfg, opts, sizes)
    diffusion = _schedule(src)
    state = _load_weights(src)
    _null_row(state, sizes, append_null)
    net = from_diffusers(state, opts)
    extra = _read_json(src / "cbdm.json", "export") if (src / "cbdm.json").is_file() else {}
    n = sizes["num_classes"]
    names = extra.get("class_names") if len(extra.get("class_names") or []) == n else [str(k) for k in range(n)]
    counts = extra.get("class_counts") if len(extra.get("class_counts") or []) == n else [1] * n
    dataset = dataset or extra.get("dataset") or "imported"
    cfg = parse_train_config({"model": {"backbone": "unet", "options": opts.model_dump(exclude={"cond_dim"})},
                              "diffusion": diffusion, "data": {"dataset": dataset}}, "imported diffusers config")
    from ..build import build_model

    model = build_model(cfg, **sizes)
    load_state_checked(model, net, f"{src} (UNet2DModel)")
    meta = RunMeta.parse({**sizes, "class_counts": counts, "class_names": names, "dataset": dataset, "cond_dim": 0,
                          "imported_from": src.name}, f"import of {src}")
    from ..run import check_class_names, checked_sizes

    checked_sizes(meta, f"import of {src}")  # what `load_run` will check: never a run nothing loads
    check_class_names(meta, int(sizes["num_classes"]), f"import of {src}")
    step = extra.get("step", 0)
    step = step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else 0
    folder = RunFolder(dest)
    path = folder.checkpoint(step)
    with locks.folder_lock(dest, "run folder"):
        save_checkpoint(path, Checkpoint(step=step, config=cfg.model_dump(mode="json"),
                                         model=net, ema={k: v.clone() for k, v in net.items()}, meta=meta))
        folder.write_config(cfg)
        for _, old in folder.list_checkpoints():
            if old != path:
                old.unlink(missing_ok=True)
    return path, cfg, meta
