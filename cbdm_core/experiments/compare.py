"""``cbdm compare``: train every method of a protocol on every seed, choose w per method on a
selection sampling seed, sample the report seed at that w, evaluate, and summarise.

Everything is resumable: a finished run (checkpoint at the final step), and a sample folder
whose ``metrics.json`` exists, are skipped; a partial run resumes from its checkpoint, one
stopped before its first checkpoint starts over from step 0; a partial sample folder keeps
its complete shards. The reference set is prepared once.

Folder layout (``DIR``)::

    protocol.json                     the protocol as run (a re-run must match it)
    runs/<method>/seed-<s>/           one training run per method and seed
        select-w<w>/                  selection samples + metrics.json + records.csv
        report-w<w>/                  report samples at the chosen w + metrics.json + records.csv

Each training seed samples with its own sampling seeds, derived from ``report_seed`` and
``guidance.selection_seed`` (:func:`sampling_seed`), so the sampling noise differs between
training seeds and is part of every seed-level interval.
    compare.json, compare.md, plots/  the result (see :mod:`.compare_report`)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..atomic import atomic_write_text, ensure_dir
from ..config import TrainConfig
from ..errors import CbdmError
from ..run_folder import RunFolder
from ..training.trainer import Trainer
from .arm_classifier import classifier_file
from .arms import check_arms, check_files_before_sampling, check_kept_set
from .protocol import MethodEntry, Protocol, protocol_dict, train_config
from .sampling_cost import timed_sampling
from .curves import collect_curve
from .heldout import ensure_heldout_real
from .sweeps import SweepPoint, best_point, value_label

PROTOCOL_JSON = "protocol.json"
# Fields that do not change any number: a re-run may change them.
_FREE = {("description",), ("training", "device"), ("evaluation", "cache_dir"), ("sampling", "batch_size")}


class StudyInterrupted(Exception):
    """Training was stopped by a signal; the run's checkpoint is saved and a re-run continues."""

    def __init__(self, run_dir: Path, step: int):
        super().__init__(f"interrupted while training {run_dir} at step {step}")
        self.run_dir, self.step = run_dir, step


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


def _study_metrics(p: Protocol) -> list[str]:
    """The evaluation's metrics, with their extractor and options checked."""
    from ..evaluation import resolve_metrics
    from ..evaluation.engine import check_metric_options
    from ..registry import get_registry

    get_registry().get("feature_extractor", p.evaluation.extractor)
    if p.evaluation.extractor == "classifier" and p.evaluation.classifier is None:
        raise CbdmError("evaluation.extractor classifier needs evaluation.classifier: a file, or auto")
    metrics = resolve_metrics(p.evaluation.metrics)
    check_metric_options(p.evaluation.metric_options)
    unknown = sorted(set(p.evaluation.metric_options) - set(metrics))
    if unknown:
        raise CbdmError(f"evaluation.metric_options names {unknown[0]!r}, which is not among the metrics")
    return metrics


def _directions(p: Protocol, metrics: list[str]) -> tuple[dict[str, str], list[str]]:
    """The ranking direction of every primary (and selection) value, and the metrics the
    selection samples need."""
    from ..evaluation.values import provider_of, rankable

    directions: dict[str, str] = {}
    for value in p.primary:
        if provider_of(value, metrics) is None:
            raise CbdmError(f"primary endpoint {value!r} is not a value of the chosen metrics "
                            f"({', '.join(metrics)}); e.g. memorization_pixels_tail needs memorization")
        directions[value] = rankable(value, metrics).value
    select_metrics = metrics
    if p.selecting():
        select = p.guidance.select or ""
        provider = provider_of(select, metrics)
        if provider is None:
            raise CbdmError(f"guidance.select {select!r} is not a value of the chosen metrics ({', '.join(metrics)})")
        directions[select] = rankable(select, metrics).value
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
    metrics = _study_metrics(p)
    directions, select_metrics = _directions(p, metrics)
    return StudyPlan(p, Path(out_dir), configs, entries, metrics, select_metrics, directions, sampling_seeds(p))


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


def _check_folder(plan: StudyPlan) -> None:
    """A study folder holds one protocol: refuse to mix results of a different one."""
    path = plan.out_dir / PROTOCOL_JSON
    current = protocol_dict(plan.protocol)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            raise CbdmError(f"{path} is not readable JSON; remove it or use another --out") from None
        diff = _first_difference(saved, current)
        if diff is not None:
            raise CbdmError(f"{plan.out_dir} holds a study of a different protocol (differs at {diff}); "
                            "use another --out")
    ensure_dir(plan.out_dir, "study folder")
    atomic_write_text(path, json.dumps(current, indent=2) + "\n")


def _first_difference(a: Any, b: Any, prefix: tuple = ()) -> Optional[str]:
    if prefix in _FREE:
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), prefix + (key,))
            if found is not None:
                return found
        return None
    return None if a == b else ".".join(prefix) or "(root)"


def _eval_options(plan: StudyPlan, metrics: list[str], classifier: Optional[Path]):
    from ..evaluation import EvalOptions

    e, d = plan.protocol.evaluation, plan.protocol.data
    return EvalOptions(dataset=d.dataset, data_root=d.root, extractor=e.extractor, classifier=classifier,
                       inception_weights=e.inception_weights, metrics=metrics, metric_options=dict(e.metric_options),
                       reference_split=e.reference_split, cache_dir=e.cache_dir, batch_size=e.batch_size,
                       device=plan.protocol.training.device, image_size=d.resize)


def _classifier(plan: StudyPlan, observer: StudyObserver) -> Optional[Path]:
    """The feature classifier file; ``auto`` trains one into the study folder once."""
    e = plan.protocol.evaluation
    if e.extractor != "classifier" or e.classifier is None:
        return None
    if e.classifier != "auto":
        return Path(e.classifier)
    from ..device import resolve_device
    from ..features.auto_classifier import ensure_classifier

    d = plan.protocol.data

    return ensure_classifier(plan.out_dir / f"classifier-{d.dataset}-heldout.safetensors", d.dataset, d.root,
                             epochs=e.classifier_epochs, device=resolve_device(plan.protocol.training.device),
                             on_status=observer.status, training_sets=_training_sets(plan))


def _training_sets(plan: StudyPlan) -> list[Any]:
    """The distinct dataset options of every run's training set (the auto classifier sees none
    of their images; runs differ only by method, so this is usually one)."""
    from ..build import dataset_options

    out: list[Any] = []
    for cfg in plan.configs.values():
        opts = dataset_options(cfg, "train")
        if opts not in out:
            out.append(opts)
    return out


def _train(plan: StudyPlan, part: Part, observer: StudyObserver, index: int) -> None:
    cfg = plan.configs[(part.method, part.seed)]
    done = RunFolder(part.folder).list_checkpoints()
    finished = bool(done) and done[-1][0] >= cfg.optim.steps
    observer.start(index, part, finished)
    if finished:
        return
    observer.status(f"{part.label}: {cfg.optim.steps} steps in {part.folder}" + (" (resuming)" if done else ""))
    total = cfg.optim.steps
    outcome = Trainer(cfg, part.folder, resume=bool(done), restart_unsaved=True,
                      on_log=lambda rec: observer.advance(rec["step"], total)).run()
    if outcome.interrupted:
        raise StudyInterrupted(part.folder, outcome.step)


def _train_arm_classifier(plan: StudyPlan, part: Part, observer: StudyObserver, index: int) -> None:
    """A sampling arm's per-run classifier (``train_classifier:``), unless its file is there."""
    from .arm_classifier import ensure_arm_classifier

    observer.start(index, part, part.folder.is_file())
    if part.folder.is_file():
        return
    observer.status(f"{part.label}: training {part.folder} from {plan.model_dir(part.method, part.seed)}")
    ensure_arm_classifier(plan.entries[part.method], plan.model_dir(part.method, part.seed), part.seed,
                          device=plan.protocol.training.device, echo=observer.status)


def _train_all_in_parallel(plan: StudyPlan, parts: list[Part], observer: StudyObserver, jobs: int) -> None:
    """Train every unfinished run of the study, ``jobs`` at a time in worker processes; the
    per-method loop then finds them finished. Runs that start from another method's weights
    (``init_from``) wait for a later wave. Raises :class:`StudyInterrupted` on Ctrl-C."""
    depth: dict[str, int] = {}
    for label, entry in plan.entries.items():  # init_from names an earlier entry (validated)
        depth[label] = 0 if entry.init_from is None else depth[entry.init_from] + 1
    for wave in sorted(set(depth.values())):
        _train_wave(plan, [x for x in parts if depth[x.method] == wave], parts, observer, jobs)


def _train_wave(plan: StudyPlan, wave: list[Part], parts: list[Part], observer: StudyObserver, jobs: int) -> None:
    from .parallel_training import TrainJob, train_in_parallel

    todo = []
    for part in wave:
        cfg = plan.configs[(part.method, part.seed)]
        done = RunFolder(part.folder).list_checkpoints()
        if not (done and done[-1][0] >= cfg.optim.steps):
            todo.append(TrainJob(cfg, part.folder, resume=bool(done), restart_unsaved=True))
    if not todo:
        return
    # Longest first, so that the last runs to finish are short ones (a method adds about one
    # forward pass per step); the order does not change any run.
    todo.sort(key=lambda j: j.config.optim.steps * (1 + len(j.config.objective.methods)), reverse=True)
    group = Part("train", "", -1, plan.out_dir, title=f"train {len(todo)} runs, {min(jobs, len(todo))} at a time")
    folders = {j.folder for j in todo}
    observer.start(min(i for i, p in enumerate(parts) if p.folder in folders), group, False)
    names = {part.folder: f"{part.method} seed {part.seed}" for part in parts}

    def finished(res) -> None:
        state = f"stopped at step {res.step}" if res.interrupted else f"finished at step {res.step}"
        observer.status(f"train {names.get(res.folder, res.folder)}: {state}")

    results = train_in_parallel(todo, jobs, on_progress=observer.advance, on_finished=finished)
    stopped = [r for r in results if r.interrupted]
    if stopped or len(results) < len(todo):
        first = stopped[0] if stopped else None
        raise StudyInterrupted(first.folder if first else plan.out_dir / "runs", first.step if first else 0)


def _read_metrics(folder: Path) -> Optional[dict[str, Any]]:
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:  # a damaged report is recomputed (the samples are kept)
        return None


def _sample_and_evaluate(plan: StudyPlan, part: Part, seed: int, num: int, options: Any, reference: Any,
                         observer: StudyObserver, index: int, runs: dict) -> dict[str, Any]:
    """The folder's ``metrics.json`` document, computed unless already there."""
    from ..evaluation import evaluate, write_metrics_json
    from ..sampling.generate import generate_samples
    from ..sampling.plan import plan_labels

    recorded = _manifest_seed(part.folder)
    if recorded is not None and recorded != seed:
        raise CbdmError(f"{part.folder} was sampled with seed {recorded}, but this study samples it with "
                        f"seed {seed} (one sampling seed per training seed); use another --out")
    stale = check_kept_set(part.folder, regenerate=plan.overwrite)  # a finished set too: not kept blindly
    doc = None if stale else _read_metrics(part.folder)
    observer.start(index, part, doc is not None)
    if doc is not None:
        return doc
    check_files_before_sampling(plan.entries[part.method], plan.model_dir(part.method, part.seed), part.seed)
    run = _loaded(plan, part, runs)
    s = plan.sampling_for(part.method, part.seed)
    labels = plan_labels(s.classes, num, run.num_classes, run.meta.class_counts)
    settings = s.model_copy(update={"seed": seed, "guidance": float(part.guidance or 0.0), "num": num})
    observer.status(f"{part.label}: sampling {num} images (seed {seed}) into {part.folder}")
    with timed_sampling(part.folder, num, next(run.model.parameters()).device):  # cost, for compare.json
        generate_samples(run, labels, out_dir=part.folder, settings=settings, overwrite=stale,
                         on_progress=lambda d, t: observer.advance(d, t))
    result = evaluate(part.folder, options, reference=reference, on_status=observer.status)
    write_metrics_json(result, part.folder / "metrics.json")
    return json.loads((part.folder / "metrics.json").read_text())


def _loaded(plan: StudyPlan, part: Part, runs: dict):
    from ..device import resolve_device
    from ..run import load_run

    key = plan.model_dir(part.method, part.seed)  # an arm loads the weights of the run it samples
    ema = plan.sampling_for(part.method, part.seed).ema
    if (key, ema) not in runs:
        runs.clear()  # one model in memory at a time
        device = resolve_device(plan.protocol.training.device)
        runs[(key, ema)] = load_run(key, ema=ema, device=device)
    return runs[(key, ema)]


def choose_guidance(points: dict[float, list[Optional[float]]], select: str) -> Optional[float]:
    """The w whose mean ``select`` over seeds is best (direction as declared); ties: smaller w."""
    scored = []
    for w, vals in points.items():
        known = [v for v in vals if v is not None]
        scored.append(SweepPoint(w, "", {select: (sum(known) / len(known)) if known else None}))
    best = best_point(scored, select)
    return None if best is None else best.value


def _select(plan: StudyPlan, label: str, method_parts: list[Part], options: Any, reference: Any,
            obs: StudyObserver, index: int, runs: dict) -> tuple[float, dict, dict[int, list[dict[str, Any]]]]:
    """``(w, points, selection)`` of one method: the fixed w, or the grid's best on the
    selection samples (sampled and evaluated here; parts numbered from ``index``)."""
    p = plan.protocol
    selection: dict[int, list[dict[str, Any]]] = {s: [] for s in p.seeds}
    if not p.selecting():
        return p.guidance.values[0], {}, selection
    select = p.guidance.select or ""
    num = p.guidance.selection_num or p.sampling.num
    for part in [x for x in method_parts if x.kind == "select"]:
        doc = _sample_and_evaluate(plan, part, plan.seeds["select"][part.seed], num, options,
                                   reference, obs, index, runs)
        index += 1
        selection[part.seed].append({"w": part.guidance, "samples": str(part.folder),
                                     "seed": _manifest_seed(part.folder), select: doc["values"].get(select)})
    points = {w: [next(x[select] for x in selection[s] if x["w"] == w) for s in p.seeds]
              for w in p.guidance.values}
    chosen = choose_guidance(points, select)
    if chosen is None:
        raise CbdmError(f"no selection sample set of {label} has a value for {select}; cannot choose w")
    obs.status(f"{label}: w = {chosen:g} chosen by {select} on the selection samples "
               f"(seeds derived from {p.guidance.selection_seed})")
    return chosen, points, selection


def run_study(protocol: Protocol, out_dir: Path, *, observer: Optional[StudyObserver] = None,
              jobs: int = 1, overwrite: bool = False) -> dict[str, Any]:
    """Run (or continue) the study of ``protocol`` in ``out_dir``; returns the ``compare.json``
    document after writing it with ``compare.md`` and the plots.

    ``jobs`` > 1 trains up to that many runs at once in worker processes, each with an equal
    share of this process's torch threads (see :mod:`.parallel_training`); sampling and
    evaluation stay in this process. ``overwrite`` regenerates kept sample sets whose guidance
    file (a noise-aware or minority classifier) changed since they were sampled."""
    from ..evaluation import prepare_reference
    from .compare_report import write_outputs

    obs = observer or StudyObserver()
    plan = plan_study(protocol, out_dir)
    plan.overwrite = overwrite
    _check_folder(plan)
    parts = plan.parts()
    obs.plan(parts)
    p = protocol
    classifier = _classifier(plan, obs)
    report_opts = _eval_options(plan, plan.eval_metrics, classifier)
    select_opts = _eval_options(plan, plan.select_metrics, classifier)
    reference = prepare_reference(report_opts, on_status=obs.status)  # once for the whole study
    if jobs > 1:
        _train_all_in_parallel(plan, [x for x in parts if x.kind == "train"], obs, jobs)
    runs: dict = {}
    results: dict[str, dict[str, Any]] = {}
    index = 0
    for label, entry in plan.entries.items():
        method_parts = [x for x in parts if x.method == label]
        for part in [x for x in method_parts if x.kind == "train"]:
            _train(plan, part, obs, index)
            index += 1
        for part in [x for x in method_parts if x.kind == "classifier"]:
            _train_arm_classifier(plan, part, obs, index)
            index += 1
        chosen, points, selection = _select(plan, label, method_parts, select_opts, reference, obs, index, runs)
        index += sum(1 for x in method_parts if x.kind == "select")
        reports = []
        for part in [x for x in method_parts if x.kind == "report"]:
            part.guidance = chosen
            part.folder = plan.run_dir(label, part.seed) / f"report-w{value_label(chosen)}"
            doc = _sample_and_evaluate(plan, part, plan.seeds["report"][part.seed], p.sampling.num, report_opts,
                                       reference, obs, index, runs)
            index += 1
            reports.append({"seed": part.seed, "run": str(plan.model_dir(label, part.seed)), "doc": doc,
                            "samples": str(part.folder), "sampling_seed": _manifest_seed(part.folder),
                            "guidance": chosen, "selection": selection[part.seed]})
        for part in [x for x in method_parts if x.kind == "curve"]:
            _sample_and_evaluate(plan, part, plan.seeds["report"][part.seed], p.sampling.num, report_opts,
                                 reference, obs, index, runs)
            index += 1
        results[label] = {"entry": entry, "chosen": chosen, "points": points, "reports": reports,
                          "curve": collect_curve(plan, label)}
    runs.clear()
    heldout = ensure_heldout_real(plan, reference, Path(reports[0]["samples"]), obs.status)
    return write_outputs(plan, results, Path(out_dir), classifier=_classifier_summary(classifier), heldout=heldout)


def _classifier_summary(path: Optional[Path]) -> Optional[dict[str, Any]]:
    if path is None:
        return None
    from ..features.auto_classifier import classifier_summary

    from .provenance import file_digest

    return {**classifier_summary(path), "sha256": file_digest(path)}


def _manifest_seed(folder: Path) -> Optional[int]:
    """The sampling seed recorded in a sample folder's manifest (what the report shows)."""
    try:
        return int(json.loads((folder / "manifest.json").read_text())["settings"]["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
