"""Planning a ``cbdm compare`` study: its parts, the sampling seeds, and every check that
can run before any time is spent (training configs, metrics, selection and primary values,
sampling settings against every run's schedule)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..config import TrainConfig
from ..errors import CbdmError
from .arm_classifier import classifier_file
from .arms import check_arms
from .protocol import MethodEntry, Protocol, train_config
from .sweeps import value_label

if TYPE_CHECKING:
    from ..evaluation.resolved import EvalComponents


@dataclass
class Part:
    """One unit of work: train a run, or sample and evaluate one folder."""

    kind: str  # "train", "classifier" (a sampling arm's), "select", "report" or "curve"
    method: str
    seed: int
    folder: Path
    guidance: Optional[float] = None
    title: Optional[str] = None  # overrides the label (a group of runs trained together)

    @property
    def label(self) -> str:
        if self.title:
            return self.title
        w = "" if self.guidance is None else f" w={self.guidance:g}"
        return f"{self.kind} {self.method} seed {self.seed}{w}"


class StudyObserver:
    """What a progress view hears; every method is optional (the default does nothing)."""

    def plan(self, parts: list[Part]) -> None:
        """The whole study; ``report`` parts carry no w until it is chosen."""

    def start(self, index: int, part: Part, skipped: bool) -> None:
        """Part ``index`` (0-based) begins; ``skipped`` when it was already finished."""

    def advance(self, done: float, total: float) -> None:
        """Progress within the current part (training steps, images)."""

    def status(self, message: str) -> None:
        """A line of information."""


@dataclass
class StudyPlan:
    """Everything a study resolves before it spends any time: configs, folders, options."""

    protocol: Protocol
    out_dir: Path
    configs: dict[tuple[str, int], TrainConfig]
    entries: dict[str, MethodEntry]
    eval_metrics: list[str]
    select_metrics: list[str]
    directions: dict[str, str] = field(default_factory=dict)  # primary and select values: "lower"/"higher"
    seeds: dict[str, dict[int, int]] = field(default_factory=dict)  # sampling seeds, see sampling_seeds()
    overwrite: bool = False  # regenerate kept sample sets whose guidance file changed (--overwrite)
    # The evaluation's names resolved once (every metric of eval_metrics, the extractor, datasets).
    evaluation: Optional["EvalComponents"] = None

    def run_dir(self, method: str, seed: int) -> Path:
        return _run_dir(self.out_dir, method, seed)

    def model_dir(self, method: str, seed: int) -> Path:
        """The run whose weights ``method`` samples: its own, or a sampling arm's ``sample_from``."""
        entry = self.entries[method]
        return self.run_dir(entry.sample_from if entry.sample_from else method, seed)

    def sampling_for(self, method: str, seed: int) -> Any:
        """The sampling settings of one entry and seed (the protocol's, or a sampling arm's)."""
        from .arms import arm_settings

        return arm_settings(self.protocol, self.entries[method], self.model_dir(method, seed), seed)

    def resolved_sampling(self, method: str, seed: int, changes: dict[str, Any]) -> Any:
        """:meth:`sampling_for` with ``changes`` (sampling seed, guidance, num), its names resolved: the
        :class:`~cbdm_core.sampling.resolved.ResolvedSampling` a sample folder is made with."""
        from ..sampling.api import resolve_sampling

        return resolve_sampling(self.sampling_for(method, seed).model_copy(update=changes))

    def parts(self) -> list[Part]:
        p = self.protocol
        out: list[Part] = []
        for label, entry in self.entries.items():
            for s in p.seeds if entry.trains else []:  # a sampling arm trains nothing
                out.append(Part("train", label, s, self.run_dir(label, s)))
            for s in p.seeds if entry.train_classifier is not None else []:  # ... but may train its classifier
                out.append(Part("classifier", label, s, classifier_file(entry, self.model_dir(label, s), s)))
            if p.selecting():
                for s in p.seeds:
                    for w in p.guidance.values:
                        out.append(Part("select", label, s, self.run_dir(label, s) / f"select-w{value_label(w)}", w))
            for s in p.seeds:
                w = None if p.selecting() else p.guidance.values[0]
                folder = self.run_dir(label, s) / ("report" if w is None else f"report-w{value_label(w)}")
                out.append(Part("report", label, s, folder, w))
            for s in p.seeds:
                for w in self.curve_only():
                    out.append(Part("curve", label, s, self.run_dir(label, s) / f"curve-w{value_label(w)}", w))
        return out

    def curve_only(self) -> list[float]:
        """The curve's w that need their own samples (the fixed w's are the report's)."""
        g = self.protocol.guidance
        return [w for w in g.curve_values if self.protocol.selecting() or w != g.values[0]]

    def curve_folder(self, method: str, seed: int, w: float) -> Path:
        """Where the curve point ``w`` of one run lives (the report folder at the fixed w)."""
        kind = "curve" if w in self.curve_only() else "report"
        return self.run_dir(method, seed) / f"{kind}-w{value_label(w)}"


def sampling_seed(base: int, training_seed: int) -> int:
    """The sampling seed of one training seed's samples: the first 4 bytes (little-endian) of
    SHA-256 of ``"cbdm-sampling/<base>/<training_seed>"``, masked to 31 bits. ``base`` is the
    protocol's ``report_seed`` or ``guidance.selection_seed``; every method of a training seed
    draws the same noise (the comparison stays paired), every training seed other noise."""
    digest = hashlib.sha256(f"cbdm-sampling/{int(base)}/{int(training_seed)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def sampling_seeds(protocol: Protocol) -> dict[str, dict[int, int]]:
    """``{"report": {training seed: sampling seed}, "select": {...}}`` (``select`` empty without a
    grid); :class:`CbdmError` in the (unlikely) case two of them coincide, since a selection
    seed must never be a report seed and each training seed needs its own noise."""
    p = protocol
    out = {"report": {s: sampling_seed(p.report_seed, s) for s in p.seeds},
           "select": {s: sampling_seed(p.guidance.selection_seed, s) for s in p.seeds} if p.selecting() else {}}
    every = list(out["report"].values()) + list(out["select"].values())
    if len(set(every)) != len(every):
        raise CbdmError("two derived sampling seeds coincide; change report_seed or guidance.selection_seed")
    return out


def _run_dir(out_dir: Path, method: str, seed: int) -> Path:
    return out_dir / "runs" / method / f"seed-{seed}"


def _train_configs(p: Protocol, out_dir: Path) -> dict[tuple[str, int], TrainConfig]:
    """Every run's training config, checked (names and options of all components)."""
    from ..build import check_components
    from ..registry import get_registry

    configs: dict[tuple[str, int], TrainConfig] = {}
    for e in p.methods:
        if not e.trains:  # a sampling arm: its source's config (validated, listed before it)
            configs.update({(e.name, s): configs[(e.sample_from, s)] for s in p.seeds})
            continue
        for name in e.names:
            get_registry().get("method", name)  # unknown: one line listing the choices
        if len(e.names) > 1 and set(e.options) - set(e.names):
            raise CbdmError(f"method {e.name}: options of a composition are keyed by method name "
                            f"({', '.join(e.names)}), got {', '.join(sorted(e.options))}")
        if not e.names and e.options:
            raise CbdmError(f"method {e.name}: ddpm (no method) takes no options")
        for s in p.seeds:
            cfg = train_config(p, e, s)
            check_components(cfg)
            if e.init_from is not None:  # set after the check: the source run is trained first
                cfg = cfg.model_copy(update={"init_from": _run_dir(Path(out_dir), e.init_from, s)})
            configs[(e.name, s)] = cfg
    return configs


def _study_metrics(p: Protocol) -> "EvalComponents":
    """The evaluation's components: its metrics, extractor and options checked, resolved once."""
    from ..build_evaluation import (check_extractor, check_metric_option_names, dataset_resolver, metric_specs,
                                    resolve_metrics)
    from ..evaluation.resolved import EvalComponents

    extractor = check_extractor(p.evaluation.extractor)
    if p.evaluation.extractor == "classifier" and p.evaluation.classifier is None:
        raise CbdmError("evaluation.extractor classifier needs evaluation.classifier: a file, or auto")
    metrics = resolve_metrics(p.evaluation.metrics)
    check_metric_option_names(p.evaluation.metric_options)
    unknown = sorted(set(p.evaluation.metric_options) - set(metrics))
    if unknown:
        raise CbdmError(f"evaluation.metric_options names {unknown[0]!r}, which is not among the metrics")
    return EvalComponents(metrics=metric_specs(metrics), extractor=extractor, datasets=dataset_resolver())


def _directions(p: Protocol, specs: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The ranking direction of every primary (and selection) value (``specs``: the chosen
    metrics'), and the metrics the selection samples need."""
    from ..evaluation.values import provider_of, rankable

    metrics = list(specs)
    directions: dict[str, str] = {}
    for value in p.primary:
        if provider_of(value, specs) is None:
            raise CbdmError(f"primary endpoint {value!r} is not a value of the chosen metrics "
                            f"({', '.join(metrics)}); e.g. memorization_pixels_tail needs memorization")
        directions[value] = rankable(value, specs).value
    select_metrics = metrics
    if p.selecting():
        select = p.guidance.select or ""
        provider = provider_of(select, specs)
        if provider is None:
            raise CbdmError(f"guidance.select {select!r} is not a value of the chosen metrics ({', '.join(metrics)})")
        directions[select] = rankable(select, specs).value
        select_metrics = [provider]  # selection samples need only the metric that picks w
    return directions, select_metrics


def plan_study(protocol: Protocol, out_dir: Path) -> StudyPlan:
    """Resolve and check the whole study without reading data: every training config (names
    and options of all components), the metrics, the selection and primary values, guidance
    against label dropout. One-line :class:`CbdmError` on the first problem."""
    from ..registry import get_registry

    p = protocol
    entries = {e.name: e for e in p.methods}
    configs = _train_configs(p, out_dir)
    if any(w > 0 for w in p.guidance.values + p.guidance.curve_values):
        nodrop = [k for k, c in configs.items() if c.objective.p_uncond <= 0]
        if nodrop:
            raise CbdmError(f"guidance w > 0 needs label dropout, but {nodrop[0][0]} trains with "
                            "objective.p_uncond = 0")
    get_registry().get("sampler", p.sampling.sampler)  # sampling's numbers: checked by its model (SamplingSettings)
    _check_study_sampling(p, configs)
    check_arms(p, configs, lambda label, s: _run_dir(Path(out_dir), label, s))
    evaluation = _study_metrics(p)
    directions, select_metrics = _directions(p, dict(evaluation.metrics))
    return StudyPlan(p, Path(out_dir), configs, entries, list(evaluation.metrics), select_metrics, directions,
                     sampling_seeds(p), evaluation=evaluation)


def _check_study_sampling(p: Protocol, configs: dict[tuple[str, int], TrainConfig]) -> None:
    """The study's sampling settings, at every w it may use, against every run's schedule:
    refused now rather than after all the runs are trained."""
    from ..build import build_schedule
    from ..settings_check import check_sampling_settings

    seen: set[str] = set()
    for cfg in configs.values():
        key = cfg.diffusion.model_dump_json()
        if key not in seen:
            seen.add(key)
            for w in p.guidance.values:
                check_sampling_settings(p.sampling, schedule=build_schedule(cfg), where="sampling", guidance=w)
