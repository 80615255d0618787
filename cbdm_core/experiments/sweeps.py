"""Sweeps (paper Figures 5 and 6): one metric curve over a grid of a setting.

* sampling sweep: one checkpoint, sampled at every value of one setting (or a grid of two) and
  each sample set evaluated: the guidance strength w (:func:`guidance_sweep`), or any numeric
  sampling setting, guidance option or sampler option (:func:`sampling_sweep`, axes from
  :mod:`.sweep_axes`: ``classifier.scale``, ``minority.scale``, ``ddpm.boost_gamma``, ...);
* training sweep: one run trained per value of a training setting (the CBDM weight tau for
  Figure 5), each sampled and evaluated with the same settings.

Every point keeps its samples in its own folder (resumable, see
:func:`cbdm_core.sampling.generate.generate_samples`) and the result is written as JSON and
PNG. Re-running a sweep re-uses finished runs, complete sample folders and cached reference
features, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..atomic import atomic_path, atomic_write_text
from ..errors import CbdmError
from ..sampling.settings import SamplingSettings
from .sweep_axes import MAX_POINTS, parse_grid

__all__ = ["SamplingSettings", "guidance_sweep", "sampling_sweep", "training_sweep", "parse_grid", "best_point", "SweepPoint",
           "SweepResult", "SweepInterrupted"]

SWEEP_JSON = "sweep.json"
SWEEP_PLOT = "sweep.png"
FORMAT = "cbdm-sweep/1"

StatusFn = Callable[[str], None]


class SweepInterrupted(Exception):
    """Training of one sweep point was stopped by a signal; its checkpoint is saved."""

    def __init__(self, run_dir: Path, step: int):
        super().__init__(f"interrupted while training {run_dir} at step {step}")
        self.run_dir, self.step = run_dir, step


def value_label(value: float) -> str:
    """A folder-friendly name for a grid value: 1.6 -> ``1.6``, 0.0005 -> ``0.0005``."""
    return f"{value:g}"


@dataclass
class SweepPoint:
    """One grid value: where its samples are and what they scored. ``value`` is the first
    axis's; ``values`` has every axis's (``{parameter: value}``) in a grid of two."""

    value: float
    samples: str
    metrics: dict[str, Optional[float]]
    run: Optional[str] = None
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class SweepResult:
    """All points of a sweep, and the best by ``select``."""

    parameter: str
    select: str
    points: list[SweepPoint]
    settings: dict[str, Any] = field(default_factory=dict)
    extractor: str = ""
    comparable_to_published: bool = True
    parameters: list[str] = field(default_factory=list)  # every axis, ``parameter`` first
    requested: int = 0  # points asked for: fewer in ``points`` means an interrupted sweep (0: not known)

    @property
    def axes(self) -> list[str]:
        return self.parameters or [self.parameter]

    @property
    def title(self) -> str:
        """``classifier.scale`` or ``classifier.scale x guidance``: what the sweep varies."""
        return " x ".join(self.axes)

    @property
    def lower_is_better(self) -> bool:
        return _lower_is_better(self.select)

    @property
    def best(self) -> Optional[SweepPoint]:
        return best_point(self.points, self.select)


def _lower_is_better(value: str) -> bool:
    """From the declaring metric's spec (``MetricSpec.values``), never from a list of names."""
    from ..build_evaluation import metric_specs
    from ..evaluation.values import REGISTERED, rankable
    from ..interfaces import Direction

    return rankable(value, metric_specs(), REGISTERED) is Direction.LOWER


def best_point(points: Sequence[SweepPoint], metric: str,
               lower_is_better: Optional[bool] = None) -> Optional[SweepPoint]:
    """The point with the best ``metric`` (its direction as the metric declares it unless
    ``lower_is_better`` is given); ties go to the smaller value of the swept setting. ``None``
    when no point has the metric."""
    scored = [p for p in points if p.metrics.get(metric) is not None]
    if not scored:
        return None
    lower = _lower_is_better(metric) if lower_is_better is None else lower_is_better
    sign = 1.0 if lower else -1.0
    return min(scored, key=lambda p: (sign * float(p.metrics[metric]), p.value, *p.values.values()))


def result_to_dict(result: SweepResult) -> dict[str, Any]:
    best = result.best
    return {
        "format": FORMAT,
        "parameter": result.parameter,
        "parameters": result.axes,
        "select": result.select,
        "select_direction": "min" if result.lower_is_better else "max",
        "best": None if best is None else {"value": best.value, **_other_values(result, best),
                                           result.select: best.metrics.get(result.select)},
        "extractor": result.extractor,
        "comparable_to_published": result.comparable_to_published,
        "settings": result.settings,
        # An interrupted sweep's best is the best of the points done so far: say so.
        "requested_points": result.requested or len(result.points),
        "complete": len(result.points) >= (result.requested or len(result.points)),
        "points": [{"value": p.value, **_other_values(result, p), "samples": p.samples, "run": p.run,
                    "metrics": p.metrics} for p in result.points],
    }


def _other_values(result: SweepResult, point: SweepPoint) -> dict[str, Any]:
    """``{"values": {parameter: value}}``: every axis's value of the point."""
    return {"values": dict(point.values) or {result.parameter: point.value}}


def write_sweep_json(result: SweepResult, path: Path) -> Path:
    atomic_write_text(Path(path), json.dumps(result_to_dict(result), indent=2, allow_nan=False) + "\n")
    return Path(path)


def plot_sweep(result: SweepResult, path: Path, metrics: Optional[Sequence[str]] = None,
               max_panels: int = 3) -> Optional[Path]:
    """One panel per value (against the swept setting), the best point marked: ``metrics``, or
    the selected value and the next scores the points carry. ``None`` (nothing written) when no
    point has any of them."""
    from matplotlib.figure import Figure

    from ..build_evaluation import metric_specs
    from ..evaluation.values import summary_values

    if metrics is None:
        names = [k for p in result.points for k in p.metrics]
        metrics = [result.select] + [m for m in summary_values(names, metric_specs())
                                     if m != result.select][:max_panels - 1]
    panels = [m for m in metrics if any(p.metrics.get(m) is not None for p in result.points)]
    if not panels:
        return None
    best = result.best
    fig = Figure(figsize=(max(5.6, 4.2 * len(panels)), 3.8), dpi=110)
    for i, metric in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for label, series in _series(result):  # one line, or one per value of the second axis
            pts = [(p.value, p.metrics[metric]) for p in series if p.metrics.get(metric) is not None]
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", linewidth=1.5, label=label)
        if best is not None and best.metrics.get(metric) is not None:
            where = ", ".join(f"{k}={v:g}" for k, v in (best.values or {result.parameter: best.value}).items())
            ax.scatter([best.value], [best.metrics[metric]], s=90, facecolors="none", edgecolors="tab:red",
                       linewidths=1.8, zorder=3, label=f"best {result.select}: {where}")
            ax.legend(fontsize=7, loc="best")
        ax.set_xlabel(result.parameter)
        ax.set_ylabel(metric.upper() if metric in ("fid", "is", "kid") else metric)
        ax.grid(True, alpha=0.3)
    title = f"{result.title} sweep\n({result.extractor} features"  # two lines: fits one panel
    title += ")" if result.comparable_to_published else "; not comparable to published numbers)"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def _series(result: SweepResult) -> list[tuple[Optional[str], list[SweepPoint]]]:
    """The points as lines against the first axis: one line, or one per value of the second."""
    if len(result.axes) < 2:
        return [(None, list(result.points))]
    second = result.axes[1]
    keys = sorted({p.values.get(second) for p in result.points}, key=float)
    return [(f"{second}={k:g}", [p for p in result.points if p.values.get(second) == k]) for k in keys]


def _sample_and_evaluate(run: Any, out_dir: Path, guidance: float, sampling: Any,
                         eval_options: Any, status: StatusFn,
                         evaluation: tuple[Any, Any]) -> tuple[dict[str, Optional[float]], Any]:
    """Sample ``run`` at ``guidance`` with ``sampling`` (a resolved
    :class:`~cbdm_core.sampling.resolved.ResolvedSampling`) into ``out_dir`` and evaluate it;
    ``evaluation``: the resolved components and the prepared reference (:func:`_preflight_eval`)."""
    from ..evaluation import write_metrics_json
    from ..evaluation.engine import evaluate
    from ..sampling.generate import generate_samples
    from ..sampling.plan import plan_labels

    st = sampling.settings
    labels = plan_labels(st.classes, st.num, run.num_classes, run.meta.class_counts)
    how = sampling.with_steps(run.schedule.num_timesteps)
    generate_samples(run, labels, out_dir=out_dir,
                     sampling=how.replace(how.settings.model_copy(update={"guidance": guidance})),
                     remedy="use a new --out")  # cbdm sweep has no --overwrite
    components, reference = evaluation
    result = evaluate(out_dir, eval_options, components=components, reference=reference, on_status=status)
    write_metrics_json(result, out_dir / "metrics.json")
    return result.values(), result.extractor


def _preflight_eval(eval_options: Any, select: str, status: StatusFn) -> tuple[Any, Any]:
    """Fail on evaluation mistakes (unknown metric, missing classifier or weights, missing
    dataset files, a --select no chosen metric declares) before any sampling or training time
    is spent; returns the evaluation's components (its names resolved once) and the reference,
    loaded once for every point of the sweep."""
    from ..build_evaluation import check_metric_option_names, metric_specs, resolve_evaluation, resolve_metrics
    from ..evaluation import build_extractor
    from ..evaluation.prepared import prepare_reference
    from ..evaluation.values import rankable

    metrics = resolve_metrics(eval_options.metrics)
    check_metric_option_names(eval_options.metric_options)
    rankable(select, metric_specs(metrics))
    components = resolve_evaluation(eval_options)
    build_extractor(eval_options, components.extractor)  # a missing classifier fails before the data is read
    return components, prepare_reference(eval_options, components, on_status=status)


def _check_sampling(sampling: SamplingSettings) -> None:
    """An unknown sampler fails before any work (the numbers were checked by the settings model)."""
    from ..registry import get_registry

    get_registry().get("sampler", sampling.sampler)


def guidance_sweep(run: Any, ws: Sequence[float], *, out_dir: Path, sampling: SamplingSettings, eval_options: Any,
                   select: str = "fid", on_status: Optional[StatusFn] = None,
                   on_point: Optional[Callable[[SweepPoint], None]] = None) -> SweepResult:
    """Sample ``run`` (a :class:`cbdm_core.run.LoadedRun`) at every guidance strength in ``ws``
    into ``out_dir/w<w>/`` and evaluate each set with ``eval_options``
    (:class:`cbdm_core.evaluation.EvalOptions`). Writes ``sweep.json`` and ``sweep.png``."""
    from .sweep_axes import GUIDANCE, Axis

    if not ws:
        raise CbdmError("the guidance grid is empty")
    if any(w < 0 for w in ws):
        raise CbdmError("guidance strengths must be >= 0")
    return sampling_sweep(run, [Axis(GUIDANCE, GUIDANCE, tuple(ws))], out_dir=out_dir, sampling=sampling,
                          eval_options=eval_options, select=select, on_status=on_status, on_point=on_point)


def sampling_sweep(run: Any, axes: Sequence[Any], *, out_dir: Path, sampling: SamplingSettings, eval_options: Any,
                   select: str = "fid", on_status: Optional[StatusFn] = None,
                   on_point: Optional[Callable[[SweepPoint], None]] = None) -> SweepResult:
    """Sample ``run`` at every point of ``axes`` (:class:`.sweep_axes.Axis`, one or a grid of
    two) into ``out_dir/<folder_name>/`` (a resumable ``cbdm sample`` folder whose manifest
    records the point's settings) and evaluate each. Writes ``sweep.json`` and ``sweep.png``
    after every point."""
    from .sweep_axes import check_points, combinations, folder_name, point_label, point_settings

    status = on_status or (lambda _m: None)
    _check_sampling(sampling)
    combos = combinations(axes)
    if not combos:
        raise CbdmError("the sweep has no points")
    if len(combos) > MAX_POINTS:
        raise CbdmError(f"the sweep has {len(combos)} points (at most {MAX_POINTS})")
    per_point = check_points(run, axes, combos, [point_settings(sampling, axes, c) for c in combos])
    evaluation = _preflight_eval(eval_options, select, status)  # after the cheap checks: it reads data
    settings = {"checkpoint": str(run.checkpoint), "step": run.step, **_sampling_dict(sampling),
                "dataset": eval_options.dataset, "reference_split": eval_options.reference_split}
    names = [a.name for a in axes]
    points: list[SweepPoint] = []
    extractor = None
    for combo, st in zip(combos, per_point):
        folder = Path(out_dir) / folder_name(axes, combo)
        status(f"{point_label(axes, combo)}: sampling {sampling.num} images into {folder}")
        values, extractor = _sample_and_evaluate(run, folder, st.settings.guidance, st, eval_options, status,
                                                 evaluation)
        point = SweepPoint(value=combo[0], samples=str(folder), metrics=values,
                           values={n: axis.typed(v) for n, axis, v in zip(names, axes, combo)})
        points.append(point)
        result = _finish(SweepResult(names[0], select, list(points), settings, parameters=names,
                                     requested=len(combos)), extractor)
        _write(result, Path(out_dir))  # after every point, so a long sweep shows its progress
        if on_point is not None:
            on_point(point)
    return result


def _sampling_dict(sampling: SamplingSettings) -> dict[str, Any]:
    out = {"num": sampling.num, "classes": sampling.classes, "sampler": sampling.sampler,
           "steps": sampling.steps, "eta": sampling.eta, "seed": sampling.seed or 0, "ema": sampling.ema}
    if sampling.guidance_method != "cfg":
        out["guidance_method"] = sampling.guidance_method
    if sampling.guidance_options:
        out["guidance_options"] = dict(sampling.guidance_options)
    if sampling.sampler_options:
        out["sampler_options"] = dict(sampling.sampler_options)
    if sampling.clip_denoised is not None:
        out["clip_denoised"] = sampling.clip_denoised
    return out


def _finish(result: SweepResult, extractor: Any) -> SweepResult:
    if extractor is not None:
        result.extractor = extractor.label
        result.comparable_to_published = bool(extractor.comparable)
    if result.points and all(result.select not in p.metrics for p in result.points):
        available = sorted({k for p in result.points for k in p.metrics})
        raise CbdmError(f"--select {result.select!r} is not among the computed metrics "
                        f"({', '.join(available) or 'none'})")
    return result


def _write(result: SweepResult, out_dir: Path) -> None:
    write_sweep_json(result, out_dir / SWEEP_JSON)
    plot_sweep(result, out_dir / SWEEP_PLOT)


def training_sweep(parameter: str, values: Sequence[float], config_for: Callable[[float], Any], *,
                   out_dir: Path, sampling: SamplingSettings, eval_options: Any, select: str = "fid",
                   device: str = "cpu", on_status: Optional[StatusFn] = None,
                   on_log: Optional[Callable[[dict], None]] = None) -> SweepResult:
    """Train one run per value (``config_for(value)`` gives its
    :class:`cbdm_core.config.TrainConfig`) into ``out_dir/<parameter>-<value>/``, then sample
    each at ``sampling.guidance`` and evaluate. A finished run is re-used, a partial one is
    resumed, so the sweep can be re-run after an interruption. ``on_log`` gets the trainer's
    log records."""
    from ..run_folder import RunFolder
    from ..run import load_run
    from ..sampling.api import resolve_sampling
    from ..training.trainer import Trainer

    status = on_status or (lambda _m: None)
    _check_sampling(sampling)
    resolved = resolve_sampling(sampling)  # the names, once for every run
    evaluation = _preflight_eval(eval_options, select, status)
    if not values:
        raise CbdmError(f"no {parameter} values to sweep")
    configs = {v: config_for(v) for v in values}  # every config validates before any training
    if sampling.guidance > 0 and any(c.objective.p_uncond <= 0 for c in configs.values()):
        raise CbdmError("the runs would be trained without label dropout (objective.p_uncond = 0): guidance has no "
                        "unconditional prediction to use; use --guidance 0")
    for v, cfg in configs.items():  # a folder of an earlier sweep is re-used only when it trained this config
        run_dir = Path(out_dir) / f"{parameter}-{value_label(v)}"
        diffs = RunFolder(run_dir).differences_from(cfg)
        if diffs:
            raise CbdmError(f"{run_dir} holds a run trained with other settings (differs in {', '.join(diffs[:4])}); "
                            "use a new --out")
        done = RunFolder(run_dir).list_checkpoints()
        if done and done[-1][0] > cfg.optim.steps:
            raise CbdmError(f"{run_dir} holds a run trained for {done[-1][0]} steps, more than the {cfg.optim.steps} "
                            "asked; use a new --out, or ask for that many steps")
    first = configs[values[0]]
    settings = {**_sampling_dict(sampling), "guidance": sampling.guidance, "dataset": eval_options.dataset,
                "reference_split": eval_options.reference_split,
                "training": {"steps": first.optim.steps, "seed": first.seed}}  # what every run trained
    points: list[SweepPoint] = []
    extractor = None
    for v in values:
        cfg = configs[v]
        run_dir = Path(out_dir) / f"{parameter}-{value_label(v)}"
        done = RunFolder(run_dir).list_checkpoints()
        if not done or done[-1][0] < cfg.optim.steps:
            status(f"{parameter} = {v:g}: training {cfg.optim.steps} steps in {run_dir}"
                   + (" (resuming)" if done else ""))
            outcome = Trainer(cfg, run_dir, resume=bool(done), restart_unsaved=True, on_log=on_log).run()
            if outcome.interrupted:
                raise SweepInterrupted(run_dir, outcome.step)
        run = load_run(run_dir, ema=sampling.ema, device=device)
        if sampling.guidance > 0 and not run.trained_with_label_dropout:
            raise CbdmError(f"{run_dir} was trained without label dropout; use --guidance 0")
        folder = run_dir / f"samples-w{value_label(sampling.guidance)}"
        values_, extractor = _sample_and_evaluate(run, folder, sampling.guidance, resolved, eval_options, status,
                                                  evaluation)
        points.append(SweepPoint(value=v, samples=str(folder), metrics=values_, run=str(run_dir)))
        result = _finish(SweepResult(parameter, select, list(points), settings, requested=len(values)), extractor)
        _write(result, Path(out_dir))  # after every point, so a long sweep shows its progress
    return result
