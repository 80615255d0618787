"""Typed run configuration (pydantic v2). Unknown keys are errors everywhere.

Plugin-specific options (backbone architecture, regulariser settings) are kept
as ``options`` mappings here and validated against the plugin's own pydantic
model by :func:`validate_components` before any work starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .sampling.settings import MAX_SEED, SamplingSettings


class _Strict(BaseModel):
    # allow_inf_nan=False: an inf or NaN option (lr, guidance, ...) is refused, not trained with.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ComponentConfig(_Strict):
    """A registered component by name, with its options."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(_Strict):
    backbone: str = "unet"
    options: dict[str, Any] = Field(default_factory=dict)


class DiffusionConfig(_Strict):
    schedule: str = "linear"
    T: int = Field(1000, ge=1, le=100_000)  # bounded: tables of size T are allocated from it
    beta_1: float = Field(1e-4, gt=0, lt=1)
    beta_T: float = Field(0.02, gt=0, lt=1)


class DataConfig(_Strict):
    dataset: str = "digits-lt"
    root: Optional[Path] = None
    imb_factor: Optional[float] = Field(None, gt=0, le=1)
    lt_profile: Literal["exp", "step"] = "exp"
    lt_seed: int = Field(0, ge=0, le=MAX_SEED)
    max_per_class: Optional[int] = Field(None, gt=0)
    download: bool = False
    strict: bool = False
    classes: Optional[list[str]] = None
    class_order: Literal["name", "count"] = "name"
    augment: str = "none"
    augment_p: float = Field(0.0, ge=0, le=1)
    resample: Literal["none", "balanced", "sqrt"] = "none"
    resize: Optional[int] = Field(None, ge=1, le=4096)  # square side; None: the dataset's own size


class ObjectiveConfig(_Strict):
    """The base loss, label dropout, and the training methods in the order they compose."""

    loss: Optional[str] = None  # the base diffusion loss; None: the backbone's default
    p_uncond: float = Field(0.1, ge=0, le=1)
    drop_whole_batch: bool = False
    methods: list[ComponentConfig] = Field(default_factory=lambda: [ComponentConfig(name="cbdm")])

    @model_validator(mode="before")
    @classmethod
    def _legacy_regularizers(cls, data: Any) -> Any:
        # Runs written before training methods were plugins say `regularizers` (only cbdm existed).
        if isinstance(data, dict) and "regularizers" in data:
            if "methods" in data:
                raise ValueError("give objective.methods only (objective.regularizers is its old name)")
            data = {k: v for k, v in data.items() if k != "regularizers"} | {"methods": data["regularizers"]}
        return data


class OptimConfig(_Strict):
    lr: float = Field(2e-4, gt=0, le=1.0)  # above 1 Adam only diverges (1e38 overflows float32)
    warmup: int = Field(5000, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    ema_decay: float = Field(0.9999, ge=0, lt=1)
    ema_warmup: bool = False
    batch_size: int = Field(128, ge=1)
    steps: int = Field(300_000, ge=1)


class PerfConfig(_Strict):
    """Speed settings; they change how fast a step runs, not what it computes (up to rounding)."""

    # auto: bf16 autocast on CUDA with bf16, and on CPUs with native bf16 matmuls (AMX or AVX512-BF16)
    amp: Literal["auto", "bf16", "off"] = "auto"
    compile: Literal["auto", "on", "off"] = "auto"  # auto: torch.compile on CUDA, eager on the CPU
    channels_last: Literal["auto", "on", "off"] = "auto"  # auto: on for CUDA; CPU: cpu_choice.py (fp32 steps: on)
    # CBDM's views: one forward over [x, x] (joint) or one per view (split); auto: what measured
    # faster for the device and precision (training/precision.py, docs/benchmarks.md).
    pass_layout: Literal["auto", "joint", "split"] = "auto"
    # auto: on for CPU training (see cbdm_core/host_memory.py); it never changes results.
    keep_host_memory: Literal["auto", "on", "off"] = "auto"
    # Leave out of the pass the extra rows no loss reads (CBDM's y' rows with weight 0: dropped labels,
    # t = 0); same loss and gradients, but a network with dropout draws its masks for fewer rows.
    # auto: on for the CPU, off on CUDA (a batch size changing every step re-tunes cuDNN, re-compiles).
    skip_unread_rows: Literal["auto", "on", "off"] = "auto"
    # How the U-Net's dropout draws its masks in training: torch's bernoulli_ or 16-bit pieces of 64-bit
    # random words (cbdm_core/nets/dropout.py; 3x cheaper on the CPU, another random stream, p rounded
    # to 2**-16). auto: words on the CPU, torch on CUDA.
    dropout_masks: Literal["auto", "torch", "words"] = "auto"

    @field_validator("compile", "channels_last", "keep_host_memory", "skip_unread_rows", mode="before")
    @classmethod
    def _yaml_bools(cls, v: Any) -> Any:
        # YAML reads a bare on/off (and true/false) as a boolean.
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class EvaluateConfig(_Strict):
    """FID/KID of a small sample set every ``every`` steps, in the feature space of the
    dataset's classifier (training/evaluation.py, docs/training.md). A quality trend within
    one run, not a publishable number."""

    every: int = Field(0, ge=0)  # 0: off
    num: int = Field(500, ge=2, le=100_000)  # samples per evaluation (FID needs at least 2)
    # A classifier file (`cbdm eval train-classifier`); None: trained once into the run folder.
    classifier: Optional[Path] = None
    classifier_epochs: int = Field(30, ge=1)  # for the classifier trained into the run folder
    metrics: list[Literal["fid", "kid"]] = Field(default_factory=lambda: ["fid", "kid"], min_length=1)
    sampler: str = "ddim"
    steps: Optional[int] = Field(None, ge=1)  # None: 20 (at most T)
    eta: float = Field(0.0, ge=0)
    guidance: float = Field(0.0, ge=0)
    # The same noise at every evaluation, so successive values differ by the weights alone.
    seed: Optional[int] = None  # None: the training seed
    batch_size: int = Field(256, ge=1)  # images per network batch (sampling and features)

    @field_validator("metrics")
    @classmethod
    def _no_repeats(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("list each metric once")
        return v


class TrainConfig(_Strict):
    """Everything a training run needs; saved as config.yaml in the run folder."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    # Training previews: one grid row per class (per_class images), at the training seed unless preview.seed.
    preview: SamplingSettings = Field(default_factory=lambda: SamplingSettings(steps=100))
    perf: PerfConfig = Field(default_factory=PerfConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    seed: int = Field(0, ge=0, le=MAX_SEED)  # torch.manual_seed takes 64-bit seeds
    init_from: Optional[Path] = None  # pre-trained run folder or checkpoint to start from
    device: str = "auto"
    log_every: int = Field(50, ge=1)
    sample_every: int = Field(0, ge=0)  # 0: only at the end
    ckpt_every: int = Field(0, ge=0)  # steps between checkpoints; 0: by time only
    # Wall-clock minutes between checkpoints, so a killed run loses at most this much; 0: off.
    ckpt_every_minutes: float = Field(15.0, ge=0)
    keep_last: int = Field(3, ge=1)  # bounds the disk the periodic checkpoints take
    log: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)  # loggers besides metrics.jsonl
    on_nonfinite: Literal["stop", "skip"] = "stop"

    @model_validator(mode="after")
    def _betas(self) -> "TrainConfig":
        if self.diffusion.beta_1 > self.diffusion.beta_T:
            raise ValueError("diffusion.beta_1 must not exceed diffusion.beta_T")
        return self


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    """One line naming the first failing field."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(root)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"invalid {source}: {loc}: {msg}{more}"


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML, TOML or JSON mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            from .safe_yaml import load_yaml

            data = load_yaml(text, f"config file {path}") or {}
        elif suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: use .yaml, .yml, .toml or .json")
    except ConfigError:
        raise
    except Exception as exc:  # parser errors are user errors
        raise ConfigError(f"cannot parse config file {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return upgrade_config_dict(data)


def upgrade_config_dict(data: dict[str, Any]) -> dict[str, Any]:
    """Old key names to new ones, so an old config file merges cleanly over a new preset
    (``objective.regularizers`` is now ``objective.methods``)."""
    objective = data.get("objective")
    if isinstance(objective, dict) and "regularizers" in objective and "methods" not in objective:
        objective = {k: v for k, v in objective.items() if k != "regularizers"} | {"methods": objective["regularizers"]}
        data = {**data, "objective": objective}
    return data


def deep_update(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def parse_train_config(data: dict[str, Any], source: str = "config") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def dump_config_yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def validate_component_options(options_model, options: dict[str, Any], where: str):
    """Validate plugin options; a failure names the field."""
    try:
        validated = options_model.model_validate(options)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None
    from .settings_check import nonfinite_value

    # A plugin's options model may not forbid inf/NaN itself; they would only fail at the first log.
    bad = nonfinite_value(validated.model_dump(exclude_unset=True))
    if bad is not None:
        raise ConfigError(f"{where}: option {bad} must be a finite number")
    return validated
