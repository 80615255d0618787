"""``cbdm train``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import click

from cbdm_core.config import deep_update, load_config_file, parse_train_config
from cbdm_core.errors import CbdmError
from cbdm_core.presets_registry import load_preset
from cbdm_core.run_folder import RunFolder

from .eval_support import LogToReporter, Reporter
from .config_options import RESUMABLE, config_options, config_values
from .method_options import SHORTHANDS, apply_methods
from .overrides import parse_set_option, set_dotted
from .train_progress import TrainDisplay, default_out


def build_config(config: Optional[Path], preset: Optional[str], opts: dict[str, Any], sets: tuple[str, ...]):
    """Resolve preset -> config file -> CLI options -> --set, then validate."""
    if config is None and preset is None:
        preset = "quickstart"
    data: dict[str, Any] = load_preset(preset) if preset else {}
    if config is not None:
        data = deep_update(data, load_config_file(config))
    if opts.get("backbone") is not None:
        _switch_backbone(data, opts["backbone"])
    config_values(data, opts)  # every option that sets one config field (cli/config_options.py)
    apply_methods(data, tuple(opts.get("method") or ()), tuple(opts.get("method_opts") or ()),
                  {k: opts.get(k) for k in SHORTHANDS})
    if opts.get("whole_batch_dropout"):
        set_dotted(data, "objective.drop_whole_batch", True)
    _perf_options(data, opts)
    _log_options(data, opts)
    for item in sets:
        key, value = parse_set_option(item)
        set_dotted(data, key, value)
    return parse_train_config(data, "configuration")


LR_ADVICE_RATIO = 3.0  # how far a configured lr may be from the backbone's advice without a change


def _switch_backbone(data: dict[str, Any], new: str) -> None:
    """``--backbone NAME`` over a config built for another backbone: that backbone's options
    do not apply to the new one, so the new one starts from its defaults, or, for a
    wrapping backbone (``edm``), wraps the configured network."""
    from cbdm_core.registry import get_registry

    model = data.setdefault("model", {})
    old = model.get("backbone")
    if old is None or old == new:
        model["backbone"] = new
        return
    spec = get_registry().get("backbone", new).obj  # unknown name: the usual one-line error
    wrap = getattr(spec, "wrap_options", None)
    options = wrap(old, dict(model.get("options") or {})) if wrap is not None else {}
    data["model"] = {**model, "backbone": new, "options": options}
    try:
        lr = float((data.get("optim") or {})["lr"])
    except (KeyError, TypeError, ValueError):  # unset or malformed: validation reports it later
        lr = None
    good = getattr(spec, "recommended_lr", None)
    if good is not None and lr is not None and max(lr / good, good / lr) > LR_ADVICE_RATIO:
        data.setdefault("optim", {})["lr"] = good  # --lr and --set still override it
        click.echo(f"note: --backbone {new}: lr {lr:g} -> {good:g} (the backbone's recommended lr; "
                   "pass --lr to choose another)", err=True)
    elif lr is not None:
        click.echo(f"note: --backbone {new} keeps the configured lr {lr:g}", err=True)


def _perf_options(data: dict[str, Any], opts: dict[str, Any]) -> None:
    """--amp and --compile/--no-compile into the perf section."""
    if opts.get("amp") is not None:
        set_dotted(data, "perf.amp", opts["amp"])
    if opts.get("compile") is not None:
        set_dotted(data, "perf.compile", "on" if opts["compile"] else "off")


def _log_options(data: dict[str, Any], opts: dict[str, Any]) -> None:
    """--log NAME (repeatable) into the log list."""
    if opts.get("log"):
        set_dotted(data, "log", sorted(set(opts["log"])))


@click.command("train")
@click.option("--out", "-o", "out", type=click.Path(path_type=Path), help="Run folder (default runs/<dataset>-<time>).")
@click.option("--config", type=click.Path(path_type=Path), help="YAML, TOML or JSON configuration file.")
@click.option("--preset", help="A named preset (default: quickstart when no --config is given).")
@config_options(("dataset", "data_root", "imb_factor", "backbone", "schedule", "T"))
@click.option("--method", "method", multiple=True, metavar="NAME",
              help="Training method(s), repeatable or a+b (see `cbdm methods`); ddpm: none.")
@click.option("--method-option", "-M", "method_opts", multiple=True, metavar="KEY=VALUE",
              help="A method option: KEY is OPTION with one method, METHOD.OPTION otherwise (values read as YAML).")
@click.option("--y-dist", help="CBDM shorthand (-M cbdm.y_dist): y' distribution train, bal, sqrt, pow:q.")
@click.option("--tau", type=float, help="CBDM shorthand (-M cbdm.tau): weight per timestep (0.001).")
@click.option("--gamma", type=float, help="CBDM shorthand (-M cbdm.gamma): commitment weight (0.25).")
@click.option("--set-size", type=int, help="CBDM shorthand (-M cbdm.set_size): Monte-Carlo set size of y'.")
@config_options(("p_uncond",))
@click.option("--whole-batch-dropout", is_flag=True, help="Drop labels for the whole batch (reference code).")
@config_options(("augment", "augment_p", "resample", "steps", "batch_size", "lr", "warmup", "ema_decay", "seed",
                 "device", "log_every", "sample_every", "ckpt_every", "ckpt_every_minutes"))
@click.option("--log", "log", multiple=True, type=click.Choice(["tensorboard", "wandb"]),
              help="Also log to TensorBoard (<run>/tensorboard) or Weights & Biases (<run>/wandb); "
                   "repeatable; needs pip install 'cbdm[tensorboard]' / 'cbdm[wandb]'.")
@config_options(("keep_last", "evaluate_every", "evaluate_num", "evaluate_classifier"))
@click.option("--amp", type=click.Choice(["auto", "bf16", "off"]),
              help="bf16 autocast (auto: on CUDA and on CPUs with AMX or AVX512-BF16).")
@click.option("--compile/--no-compile", "compile", default=None, help="torch.compile the model (default: on CUDA).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any config field, e.g. model.options.ch=64.")
@config_options(("init_from",))
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace a different run already in --out.")
@click.option("--progress/--no-progress", default=True)
def train(out, config, preset, sets, resume, overwrite, progress, **opts):
    """Train a class-conditional diffusion model (method cbdm by default; --method ddpm for none)."""
    from cbdm_core.training.trainer import Trainer

    cfg = _train_config(out, config, preset, sets, resume, opts)
    out = default_out(cfg) if out is None else out
    display = TrainDisplay(cfg, out, progress)
    trainer = Trainer(cfg, out, resume=resume, overwrite=overwrite, on_log=display.on_log,
                      on_start=display.on_start, on_step=display.on_step, on_status=display.say)
    display.trainer = trainer
    try:
        with LogToReporter(Reporter()):  # warnings (resume fallbacks, pruning) reach the terminal
            result = trainer.run()
    finally:
        display.stop()
    display.finished(result)


def _train_config(out: Optional[Path], config: Optional[Path], preset: Optional[str], sets: tuple[str, ...],
                  resume: bool, opts: dict[str, Any]):
    """The run's configuration: the saved one plus the resumable options (--resume), else built."""
    if resume and out is None:
        raise CbdmError("--resume needs --out RUN_DIR")
    for key, value in opts.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise CbdmError(f"--{key.replace('_', '-')} must be a finite number, got {value}")
    if resume and RunFolder(out).config.exists():
        if config is not None or preset is not None:
            raise CbdmError("--resume continues the saved run; drop --config/--preset")
        base = load_config_file(RunFolder(out).config) or _config_of_newest_checkpoint(RunFolder(out))
        return parse_train_config(deep_update(base, build_config_overrides(opts, sets)), "configuration")
    return build_config(config, preset, opts, sets)


def _config_of_newest_checkpoint(folder: RunFolder) -> dict[str, Any]:
    """An empty ``config.yaml`` (cbdm writes it whole, so it was emptied since): every checkpoint
    stores the configuration, so the newest one's is used, with a warning."""
    import json

    from cbdm_core.checkpoint import read_metadata

    for _, path in reversed(folder.list_checkpoints()):
        try:
            config = json.loads(read_metadata(path)["config"])
        except (CbdmError, KeyError, ValueError):
            continue
        if isinstance(config, dict) and config:
            click.echo(f"warning: {folder.config} is empty; resuming with the configuration stored in {path}",
                       err=True)
            return config
    raise CbdmError(f"{folder.config} is empty and no checkpoint of the run stores a configuration; "
                    "start the run again with --overwrite")


def build_config_overrides(opts: dict[str, Any], sets: tuple[str, ...]) -> dict[str, Any]:
    """The overrides a resume may apply on top of the saved configuration."""
    data: dict[str, Any] = {}
    _perf_options(data, opts)
    _log_options(data, opts)
    config_values(data, opts, resumable_only=True)
    others = [k for k, v in opts.items() if v not in (None, False, ()) and k not in
              (*RESUMABLE, "amp", "compile", "log")]
    if others or sets:
        raise CbdmError(f"--resume continues the saved run; it cannot change --{others[0].replace('_', '-') if others else 'set'}")
    return data
