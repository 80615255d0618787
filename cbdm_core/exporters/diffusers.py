"""``cbdm export --format diffusers``: a run -> a folder diffusers loads.

The folder holds ``unet/`` (``UNet2DModel``: config.json + diffusion_pytorch_model.safetensors),
``scheduler/`` (``DDIMScheduler`` of the run's noise schedule), ``model_index.json``,
``pipeline.py`` (a class-conditional pipeline with classifier-free guidance) and a model card.
It is written into a temporary sibling folder and moved into place at the end.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch

from ..errors import CbdmError
from .model_card import model_card
from .unet_mapping import check_mappable, diffusers_config, to_diffusers

PIPELINE_CLASS = "CBDMPipeline"
# A schedule whose betas diffusers' named schedule reproduces to this tolerance is written by name.
_BETA_TOL = 1e-6


@dataclass
class ExportResult:
    out: Path
    step: int
    weights: str
    num_classes: int
    max_abs_diff: float  # the self-check: exported vs project network on one random batch


def require_diffusers(flag: str) -> None:
    """A one-line error when the optional diffusers package is missing."""
    if importlib.util.find_spec("diffusers") is None:
        raise CbdmError(f"{flag} needs the diffusers package: pip install 'cbdm[diffusers]' (or pip install diffusers)")


def _check_backbone(run: Any) -> None:
    from ..nets.unet import UNet

    cfg = run.config
    if cfg.model.backbone != "unet" or type(run.model) is not UNet:
        raise CbdmError(f"only the 'unet' backbone maps onto diffusers' UNet2DModel; this run uses "
                        f"{cfg.model.backbone!r} ({type(run.model).__name__})")
    from ..build import loss_name

    if loss_name(cfg) != "ddpm":
        raise CbdmError(f"only epsilon-prediction runs (loss 'ddpm') can be exported; this run uses {loss_name(cfg)!r}")
    # A method's modules (CORAL's head, CM's adapters) are part of the network: UNet2DModel has no place for them.
    m = run.model
    with torch.device("meta"):  # the plain U-Net's names, without allocating its weights
        plain = UNet(m.options, image_size=m.image_size, channels=m.channels, num_classes=m.num_classes)
    extra = sorted(set(m.state_dict()) - set(plain.state_dict()))
    if extra:
        methods = ", ".join(x.name for x in cfg.objective.methods) or "its methods"
        raise CbdmError(f"this run's network carries weights its training methods added ({extra[0]}, ... "
                        f"{len(extra)} in all; methods: {methods}); only a plain U-Net maps onto diffusers' "
                        "UNet2DModel")


def scheduler_config(schedule: Any, cfg: Any) -> dict[str, Any]:
    """``DDIMScheduler`` config with the run's betas: by name (linear / squaredcos_cap_v2) when
    diffusers' named schedule gives the same betas, else the betas themselves (``trained_betas``)."""
    from diffusers import DDIMScheduler

    d = cfg.diffusion
    base = {"num_train_timesteps": schedule.num_timesteps, "prediction_type": "epsilon", "clip_sample": False,
            "clip_sample_range": 1.0, "set_alpha_to_one": True, "steps_offset": 0, "timestep_spacing": "leading",
            "thresholding": False, "rescale_betas_zero_snr": False}
    named = {"linear": {"beta_schedule": "linear", "beta_start": d.beta_1, "beta_end": d.beta_T},
             "cosine": {"beta_schedule": "squaredcos_cap_v2"}}.get(d.schedule)
    if named is not None:
        probe = DDIMScheduler(**base, **named)
        if (probe.betas.double() - schedule.betas).abs().max().item() <= _BETA_TOL:
            return {**base, **named}
    return {**base, "beta_schedule": "linear", "trained_betas": schedule.betas.tolist()}


def _self_check(run: Any, unet: Any) -> float:
    """Max |eps| difference between the run's network and the exported one on a random batch."""
    g = torch.Generator().manual_seed(0)
    m = run.model
    x = torch.randn(2, m.channels, m.image_size, m.image_size, generator=g)
    t = torch.tensor([0, run.schedule.num_timesteps - 1])
    y = torch.tensor([0, m.num_classes])
    with torch.no_grad():
        ours = m(x, t, y)
        theirs = unet(x, t, class_labels=y).sample
    diff = (ours - theirs).abs().max().item()
    if not diff <= 1e-4 * max(1.0, ours.abs().max().item()):
        raise CbdmError(f"the exported UNet2DModel differs from the run's network (max |diff| {diff:.3g}); "
                        "nothing was written")
    return diff


def _write_folder(tmp: Path, run: Any, unet: Any, sched: dict[str, Any], weights: str) -> None:
    from diffusers import DDIMScheduler

    unet.save_pretrained(tmp / "unet", safe_serialization=True)
    DDIMScheduler(**sched).save_pretrained(tmp / "scheduler")
    shutil.copyfile(Path(__file__).with_name("diffusers_pipeline.py"), tmp / "pipeline.py")
    import diffusers

    # [module, class]: diffusers loads the class from pipeline.py beside it (trust_remote_code=True).
    index = {"_class_name": ["pipeline", PIPELINE_CLASS], "_diffusers_version": diffusers.__version__,
             "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (tmp / "README.md").write_text(model_card(run, weights))
    # What diffusers' configs have no place for; `cbdm import-checkpoint --format diffusers` reads it back.
    facts = {"format": "cbdm-diffusers-export", "step": run.step, "weights": weights,
             "dataset": run.meta.dataset if run.meta.dataset is not None else run.config.data.dataset,
             "class_names": run.meta.class_names, "class_counts": run.meta.class_counts,
             "guidance": "(1 + w) * eps(x, y) - w * eps(x, null)", "null_label": run.num_classes}
    (tmp / "cbdm.json").write_text(json.dumps(facts, indent=2) + "\n")


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    old = None
    if out.exists():
        if any(out.iterdir()) and not overwrite:
            raise CbdmError(f"{out} exists and is not empty; pass --overwrite to replace it")
        old = out.with_name(f".{out.name}.old-{tmp.name}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_diffusers(run_path: Union[str, Path], out: Union[str, Path], *, weights: str = "ema",
                     overwrite: bool = False) -> ExportResult:
    """Write the run at ``run_path`` (EMA or raw ``weights``) as a diffusers folder ``out``."""
    require_diffusers("cbdm export --format diffusers")
    from diffusers import UNet2DModel

    from ..run import load_run

    if weights not in ("ema", "model"):
        raise CbdmError(f"--weights must be 'ema' or 'model', got {weights!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CbdmError(f"{out} is a file; --out must name a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CbdmError(f"{out} exists and is not an empty folder; pass --overwrite to replace it")
    run = load_run(run_path, ema=weights == "ema")
    _check_backbone(run)
    opts = run.model.options
    check_mappable(opts, run.meta.cond_dim)
    m = run.model
    unet = UNet2DModel(**diffusers_config(opts, image_size=m.image_size, channels=m.channels,
                                          num_classes=m.num_classes)).eval()
    unet.load_state_dict(to_diffusers(m.state_dict(), opts), strict=True)
    diff = _self_check(run, unet)
    sched = scheduler_config(run.schedule, run.config)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:  # a parent that is a file, a read-only disk
        raise CbdmError(f"cannot create {out}: {exc.strerror or exc}") from None
    try:
        _write_folder(tmp, run, unet, sched, weights)
        _move_into_place(tmp, out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out=out, step=run.step, weights=weights, num_classes=m.num_classes, max_abs_diff=diff)
