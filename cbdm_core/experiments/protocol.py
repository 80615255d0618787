"""The protocol of a method comparison (``cbdm compare``): one YAML file, validated here.

A protocol fixes everything that must be identical for every method (data, network, training
budget, seeds, sampling, how w is chosen, metrics) and the pre-registered primary endpoints,
so that the only difference between the compared runs is the method. See docs/compare.md.
"""

from __future__ import annotations

import copy
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import TrainConfig, deep_update, format_validation_error, parse_train_config
from ..errors import CbdmError
from ..safe_yaml import load_yaml
from ..sampling.settings import SamplingSettings
from .arm_classifier import ArmClassifier, check_arm_classifier
from .arms import ArmSampling, check_arm_entry

# The name `cbdm train --method` uses for "no method" (plain conditional DDPM).
NO_METHOD = "ddpm"
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataSpec(_Strict):
    """The training data: the dataset, its imbalance and where its files are."""

    dataset: str
    imb_factor: Optional[float] = Field(None, gt=0, le=1)
    root: Optional[Path] = None
    download: bool = False
    max_per_class: Optional[int] = Field(None, ge=1)
    lt_profile: Optional[Literal["exp", "step"]] = None
    lt_seed: Optional[int] = Field(None, ge=0)
    resize: Optional[int] = Field(None, ge=1, le=4096)


class TrainingSpec(_Strict):
    """Network and budget, the same for every method: a preset, then ``config`` (a nested
    mapping of training-config fields) on top; ``steps`` is ``optim.steps``."""

    preset: Optional[str] = None
    config: dict[str, Any] = Field(default_factory=dict)
    steps: Optional[int] = Field(None, ge=1)
    device: str = "auto"


class MethodEntry(_Strict):
    """One compared method: ``ddpm`` (no method), a registered method or a composition ``a+b``.

    ``options``: with one method, that method's options; with a composition, a mapping from
    method name to its options. ``label`` names the method in reports and folders (default: ``method``).
    ``init_from`` names an earlier method of the study: each seed's run starts from that
    method's final weights of the same seed (fine-tuning, the paper's Table 2); ``steps`` then
    gives this entry's own budget (default: ``training.steps``).
    ``sample_from`` (with ``label`` and ``sampling``, no ``method``) makes the entry a sampling
    arm: it trains nothing and samples that earlier method's runs with its own sampler or
    guidance (see :mod:`.arms`).
    """

    method: Optional[str] = None
    options: dict[str, Any] = Field(default_factory=dict)
    label: Optional[str] = None
    init_from: Optional[str] = None
    steps: Optional[int] = Field(None, ge=1)
    sample_from: Optional[str] = None
    sampling: Optional[ArmSampling] = None
    train_classifier: Optional[ArmClassifier] = None  # a sampling arm's per-run classifier (.arm_classifier)

    @property
    def name(self) -> str:
        return self.label or self.method or ""

    @property
    def trains(self) -> bool:
        """False for a sampling arm."""
        return self.sample_from is None

    @property
    def names(self) -> list[str]:
        """The composed method names in order (``[]`` for ddpm and for a sampling arm)."""
        parts = [p.strip() for p in (self.method or NO_METHOD).split("+") if p.strip()]
        return [] if parts == [NO_METHOD] else parts

    def config_methods(self) -> list[dict[str, Any]]:
        """``objective.methods`` of this entry."""
        names = self.names
        if len(names) <= 1:
            return [{"name": n, "options": dict(self.options)} for n in names]
        return [{"name": n, "options": dict(self.options.get(n) or {})} for n in names]


# The w a protocol may name (classifier-free guidance): 0 is plain conditional sampling; the
# papers use 1.0-2.0, and far beyond 10 the samples saturate, so a larger w is a typo.
W_MIN, W_MAX = 0.0, 20.0


def _check_w(w: float, where: str) -> float:
    if not math.isfinite(w) or not W_MIN <= w <= W_MAX:
        raise ValueError(f"{where} {w!r} must be a finite w within [{W_MIN:g}, {W_MAX:g}]")
    return float(w)


class GuidanceSpec(_Strict):
    """How w is chosen. ``fixed: W``: one pre-registered w for every method (as the papers do);
    ``curve: [w, ...]`` adds every w of the list, evaluated with all metrics (the w-curves,
    Pareto plots and the comparison at matched tail accuracy). ``grid`` + ``select``: the best
    of ``grid`` per method by the declared value, on samples drawn with ``selection_seed``
    (never with the report seed); no shipped protocol uses it any more."""

    fixed: Optional[float] = None
    curve: Optional[list[float]] = None
    grid: Optional[list[float]] = None
    select: Optional[str] = None
    selection_seed: int = 1
    selection_num: Optional[int] = Field(None, ge=1)

    @field_validator("grid", "curve", mode="before")
    @classmethod
    def _grid(cls, v: Any) -> Any:
        if isinstance(v, str):  # "0:2:0.5" or "0,1,2", as `cbdm sweep --grid`
            from .sweeps import parse_grid

            return parse_grid(v)
        return v

    @model_validator(mode="after")
    def _one_way(self) -> "GuidanceSpec":
        if (self.fixed is None) == (self.grid is None):
            raise ValueError("give either fixed: W or grid: [...] with select: VALUE")
        if self.fixed is not None:
            self.fixed = _check_w(self.fixed, "guidance.fixed")
        if self.curve is not None:
            curve = [_check_w(w, "guidance.curve value") for w in self.curve]
            if len(curve) < 2:
                raise ValueError("guidance.curve needs at least 2 values of w")
            if any(b <= a for a, b in zip(curve, curve[1:])):
                raise ValueError(f"guidance.curve must be sorted and without repeats, got {curve}")
            self.curve = curve
        if self.grid is not None:
            if not self.grid or any(w < 0 for w in self.grid):
                raise ValueError("grid needs at least one w >= 0")
            if not self.select:
                raise ValueError("a grid needs select: the value that picks w (e.g. fid)")
            self.grid = sorted({round(_check_w(float(w), "guidance.grid value"), 10) for w in self.grid})
        elif self.select is not None:
            raise ValueError("select only applies to a grid")
        return self

    @property
    def values(self) -> list[float]:
        return list(self.grid) if self.grid is not None else [float(self.fixed or 0.0)]

    @property
    def curve_values(self) -> list[float]:
        """The w of the curve (empty without one), the fixed w among them: the report at the fixed w is
        the curve's point there (a curve `[0, 2]` with `fixed: 1` is the curve 0, 1, 2; without it the
        plots and the comparison at matched tail accuracy left the report's w out)."""
        if not self.curve:
            return []
        return sorted(set(self.curve) | ({float(self.fixed)} if self.fixed is not None else set()))


class EvaluationSpec(_Strict):
    """Metrics and features. ``classifier: auto`` trains the dataset's feature classifier once
    into the study folder (small datasets only; give a file for large ones)."""

    metrics: list[str]
    extractor: str = "inception"
    classifier: Optional[Union[Path, Literal["auto"]]] = None
    classifier_epochs: int = Field(30, ge=1)
    inception_weights: Optional[Path] = None
    metric_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    reference_split: Literal["train", "test"] = "train"
    cache_dir: Optional[Path] = None
    batch_size: int = Field(200, ge=1)


class Protocol(_Strict):
    """A whole comparison. See docs/compare.md for every field."""

    name: str = "study"
    description: str = ""
    data: DataSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    methods: list[MethodEntry] = Field(min_length=1)
    baseline: Optional[str] = None
    seeds: list[int] = Field(min_length=1)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    guidance: GuidanceSpec
    report_seed: int = 0
    evaluation: EvaluationSpec
    primary: list[str] = Field(default_factory=list)
    bootstrap: int = Field(10_000, ge=100)

    @model_validator(mode="after")
    def _consistent(self) -> "Protocol":
        for i, m in enumerate(self.methods):  # first: an arm without a label has no name yet
            check_arm_entry(m, [e.name for e in self.methods[:i] if e.trains])
            check_arm_classifier(m)
        labels = [m.name for m in self.methods]
        for label in labels:
            if not _LABEL.match(label):
                raise ValueError(f"method label {label!r}: use letters, digits and _.+- only")
        if len(set(labels)) != len(labels):
            raise ValueError(f"methods are listed twice: {', '.join(labels)} (give a label: to tell them apart)")
        for i, m in enumerate(self.methods):
            trained = [e.name for e in self.methods[:i] if e.trains]
            if m.init_from is not None and m.init_from not in trained:
                raise ValueError(f"method {m.name}: init_from {m.init_from!r} must name a trained method listed "
                                 f"before it ({', '.join(trained) or 'none'})")
        if self.baseline is not None and self.baseline not in labels:
            raise ValueError(f"baseline {self.baseline!r} is not among the methods ({', '.join(labels)})")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds are listed twice")
        given = self.sampling.model_fields_set
        if "seed" in given or "guidance" in given:
            raise ValueError("sampling.seed and sampling.guidance are set by the study: use report_seed, "
                             "guidance.selection_seed and guidance.fixed / guidance.grid")
        if self.guidance.grid is not None and self.guidance.selection_seed == self.report_seed:
            raise ValueError("guidance.selection_seed must differ from report_seed: the report samples "
                             "must never choose w")
        if len(set(self.primary)) != len(self.primary):
            raise ValueError("primary lists a value twice")
        return self

    @property
    def baseline_label(self) -> str:
        return self.baseline or self.methods[0].name

    def selecting(self) -> bool:
        return self.guidance.grid is not None


def protocol_folder():
    return resources.files("cbdm_core") / "protocols"


def protocol_names() -> list[str]:
    """The shipped protocols (``cbdm_core/protocols/*.yaml``)."""
    return sorted(p.name[:-5] for p in protocol_folder().iterdir() if p.name.endswith(".yaml"))


def protocol_description(name: str) -> str:
    """The ``description`` of a shipped protocol."""
    data = yaml.safe_load((protocol_folder() / f"{name}.yaml").read_text()) or {}
    return str(data.get("description", "")).strip()


def read_protocol_data(source: Union[str, Path]) -> tuple[dict[str, Any], str]:
    """``(mapping, where)`` of a protocol file or a shipped protocol's name."""
    path = Path(source)
    if path.is_file():
        text, where = path.read_text(), str(path)
    elif str(source) in protocol_names():
        text, where = (protocol_folder() / f"{source}.yaml").read_text(), f"protocol {source}"
    else:
        raise CbdmError(f"no protocol file {source} and no shipped protocol of that name "
                        f"(shipped: {', '.join(protocol_names())})")
    try:
        data = load_yaml(text, where)  # bounded: aliases cannot expand without limit
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise CbdmError(f"{where} is not valid YAML{at}") from None
    if not isinstance(data, dict):
        raise CbdmError(f"{where} must be a mapping of protocol fields (data, methods, seeds, ...)")
    return data, where


def parse_protocol(data: dict[str, Any], where: str = "protocol") -> Protocol:
    """Validate ``data``; a one-line :class:`CbdmError` naming the first bad field otherwise."""
    try:
        return Protocol.model_validate(data)
    except ValidationError as exc:
        raise CbdmError(format_validation_error(exc, where)) from None
    except CbdmError as exc:  # from a validator (a grid string)
        raise CbdmError(f"invalid {where}: {exc}") from None


def load_protocol(source: Union[str, Path], overrides: Optional[dict[str, Any]] = None) -> Protocol:
    """Read, override (dotted keys, e.g. ``{"training.steps": 10}``) and validate a protocol."""
    data, where = read_protocol_data(source)
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    return parse_protocol(data, where)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    keys = dotted.split(".")
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def protocol_dict(protocol: Protocol) -> dict[str, Any]:
    """The protocol as plain JSON-able data (what the study folder records)."""
    data = json.loads(protocol.model_dump_json())
    for m in data.get("methods", []):  # unset: as recorded before the field existed (folders still resume)
        if m.get("train_classifier") is None:
            m.pop("train_classifier", None)
    for section in [data.get("sampling")] + [m.get("sampling") for m in data.get("methods", [])]:
        if isinstance(section, dict) and section.get("precision") == "fp32":  # the default, as before the field
            section.pop("precision")
    return data


def train_config(protocol: Protocol, entry: MethodEntry, seed: int) -> TrainConfig:
    """The training configuration of one method and seed: preset -> ``training.config`` ->
    data -> steps/seed/device -> the method; identical across methods except the method."""
    from ..presets_registry import load_preset

    t = protocol.training
    data: dict[str, Any] = load_preset(t.preset) if t.preset else {}
    data = deep_update(data, copy.deepcopy(t.config))
    d = protocol.data
    section = data.setdefault("data", {})
    section["dataset"] = d.dataset
    for key in ("imb_factor", "root", "max_per_class", "lt_profile", "lt_seed", "resize"):
        value = getattr(d, key)
        if value is not None:
            section[key] = str(value) if isinstance(value, Path) else value
    if d.download:
        section["download"] = True
    steps = entry.steps if entry.steps is not None else t.steps
    if steps is not None:
        data.setdefault("optim", {})["steps"] = steps
    data["seed"] = seed
    data["device"] = t.device
    data.setdefault("objective", {})["methods"] = entry.config_methods()
    return parse_train_config(data, f"training config of {entry.name} (seed {seed})")
