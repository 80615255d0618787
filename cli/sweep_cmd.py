"""``cbdm sweep``: a metric curve over guidance strengths (paper Figure 6) or over a numeric
option of a training method, one trained run per value (``sweep option``; ``sweep tau``, Figure 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import click
from rich.console import Console
from rich.table import Table

from cbdm_core.errors import CbdmError

from .sampling_options import checked_value, sampling_options, sampling_settings_from_options
from .default_group import DEFAULT_CMD, DefaultCommand, DefaultGroup
from .eval_support import (LogToReporter, Reporter, choose_extractor, feature_options, parse_metric_options,
                           split_metrics)

DEFAULT_GRID = "0:2:0.2"
DEFAULT_METRICS = "fid,is"


class _SweepGroup(DefaultGroup):
    default_usage = "RUN_DIR_OR_CHECKPOINT [OPTIONS]"


# Sweep wording where it says more than the models' field descriptions.
SWEEP_HELP = {
    "num": "Images per point (the paper uses 10,000 for its curves).",
    "guidance_method": "Registered guidance: cfg, classifier, cfg+classifier, minority, self-minority, ... "
                       "(as cbdm sample).",
    "guidance_options": "An option of the guidance, e.g. -G classifier=clf.safetensors (repeatable).",
    "sampler_options": "An option of the sampler, e.g. -S boost_gamma=2 (repeatable).",
    "seed": "Sampling seed; every point gets the same noise.",
}


def _sampling_options(f):
    """The sampling flags every sweep takes (generated from the settings models), then its own."""
    decorators = [
        sampling_options(("num", "classes", "sampler", "steps", "eta", "guidance_method", "guidance_options",
                          "sampler_options", "clip_denoised", "precision", "seed", "batch_size"),
                         defaults={"num": 1000, "seed": 0}, helps=SWEEP_HELP),
        click.option("--metrics", default=DEFAULT_METRICS, show_default=True, help="Comma-separated metrics."),
        click.option("--select", default="fid", show_default=True,
                     help="Value that picks the best point (lowest or highest, as its metric declares)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    ]
    for decorate in reversed(decorators):
        f = decorate(f)
    return feature_options(f)


def _eval_options(dataset: str, data_root: Optional[Path], metrics: str, extractor: Optional[str],
                  classifier: Optional[Path], inception_weights: Optional[Path], metric_options: tuple[str, ...],
                  reference_split: str, cache_dir: Optional[Path], device: str, on_status: Callable[[str], None]):
    from cbdm_core.evaluation import EvalOptions

    extractor, classifier = choose_extractor(extractor, classifier, dataset, data_root, cache_dir, device, on_status)
    return EvalOptions(dataset=dataset, data_root=data_root, extractor=extractor, classifier=classifier,
                       inception_weights=inception_weights, metrics=split_metrics(metrics),
                       metric_options=parse_metric_options(metric_options), reference_split=reference_split,
                       cache_dir=cache_dir, device=device)


def _check_select(select: str, metrics: str) -> None:
    """``--select`` must be a score declared by one of ``--metrics`` (from the metric specs)."""
    from cbdm_core.build_evaluation import metric_specs
    from cbdm_core.evaluation.values import provider_of, rankable

    specs = metric_specs(split_metrics(metrics) or [])  # unknown: error listing the choices
    if provider_of(select, specs) is None:
        needed = provider_of(select, metric_specs())
        hint = f"the metric {needed!r} in --metrics" if needed else "a metric that returns it"
        raise CbdmError(f"--select {select} needs {hint} (got {metrics})")
    rankable(select, specs)


def _table(result) -> Table:
    from cbdm_core.build_evaluation import metric_specs
    from cbdm_core.evaluation.values import summary_values

    keys = summary_values([k for p in result.points for k in p.metrics], metric_specs())
    keys = [k for k in keys if any(p.metrics.get(k) is not None for p in result.points)]
    best = result.best
    table = Table(title=f"{result.title} sweep ({result.extractor})", show_edge=False)
    for name in result.axes:
        table.add_column(name, justify="right")
    for k in keys:
        table.add_column(k, justify="right")
    for p in result.points:
        mark = " *" if best is not None and p is best else ""
        values = [p.values.get(n, p.value) for n in result.axes]
        table.add_row(*[f"{v:g}" for v in values[:-1]], f"{values[-1]:g}{mark}",
                      *["-" if p.metrics.get(k) is None else f"{p.metrics[k]:.4g}" for k in keys])
    return table


def _report(result, out: Path, reporter: Reporter) -> None:
    from cbdm_core.experiments.sweeps import SWEEP_JSON, SWEEP_PLOT

    Console().print(_table(result))
    best = result.best
    if best is None:
        reporter.warning(f"no point has a value for {result.select}; no best {result.title}")
    else:
        direction = "lowest" if result.lower_is_better else "highest"
        where = (f"{best.value:g}" if len(result.axes) < 2
                 else ", ".join(f"{n} = {best.values[n]:g}" for n in result.axes))
        click.echo(f"best {result.title}: {where} ({direction} {result.select} {best.metrics[result.select]:.4g})")
    if not result.comparable_to_published:
        reporter.warning(f"{result.extractor} features: compare these numbers only with each other")
    click.echo(f"wrote {out / SWEEP_JSON} and {out / SWEEP_PLOT}")


@click.group("sweep", cls=_SweepGroup)
def sweep_group() -> None:
    """Metric curves over a setting: guidance strength w for one checkpoint (Figure 6 of the
    paper; `cbdm sweep RUN`), a sampling-time method's option for one checkpoint (`cbdm sweep
    RUN --axis classifier.scale=0:4:1`, `--axis ddpm.boost_gamma=1,2,4`; a grid of two with a
    second --axis or a --grid of w), or any numeric option of a training method, training one
    run per value (`cbdm sweep option cbdm.tau`; `cbdm sweep tau` is its CBDM shorthand,
    Figure 5). Each point's samples stay in their own folder and a re-run continues an
    interrupted sweep. Writes sweep.json and sweep.png."""


@sweep_group.command(DEFAULT_CMD, cls=DefaultCommand, hidden=True)
@click.argument("run_path", metavar="RUN_DIR_OR_CHECKPOINT", type=click.Path(path_type=Path))
@click.option("--grid", "-w", "grid", help="Guidance strengths w: start:stop:step (stop included) or a list like "
              f"0,0.8,1.6 [default: {DEFAULT_GRID}; with --axis: 0]. One value with --axis fixes w.")
@click.option("--axis", "-a", "axes", multiple=True, metavar="NAME=VALUES",
              help="Sweep another setting instead (or as well; a grid of two at most): NAME is GUIDANCE.OPTION "
                   "(classifier.scale, minority.scale, self-minority.scale), SAMPLER.OPTION (ddpm.boost_gamma, "
                   "ddim.skip), steps or eta; VALUES as --grid. Repeatable.")
@click.option("--dataset", help="Dataset to compare with [default: the run's training dataset].")
@click.option("--data-root", type=click.Path(path_type=Path), help="Dataset folder [default: the run's].")
@_sampling_options
@click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights.")
@click.option("--out", "-o", type=click.Path(path_type=Path),
              help="Sweep folder [default: <run>/sweep-guidance, or <run>/sweep-<axis> with --axis].")
def guidance_cmd(run_path: Path, grid: Optional[str], axes: tuple[str, ...], dataset: Optional[str],
                 data_root: Optional[Path], metrics: str, select: str, device: str, ema: bool, out: Optional[Path],
                 **rest: Any) -> None:
    """Sample one checkpoint at every guidance strength of --grid, or every value of --axis
    (a guidance or sampler option), and evaluate each."""
    from cbdm_core.device import resolve_device
    from cbdm_core.experiments.sweeps import sampling_sweep
    from cbdm_core.run import load_run

    from .sample_cmd import run_dir_of

    reporter = Reporter()
    sampling, specs, given = _sweep_settings(grid, axes, ema, rest)
    _check_select(select, metrics)
    run = load_run(run_path, ema=ema, device=resolve_device(device))
    dataset = dataset or run.config.data.dataset
    if data_root is None and dataset == run.config.data.dataset and run.config.data.root:
        data_root = Path(run.config.data.root)
    axes_, sampling = _resolve_axes(specs, sampling, given, run.schedule.num_timesteps)
    options = _eval_options(dataset, data_root, metrics, device=device, on_status=reporter.status, **rest)
    default = "sweep-" + ("_".join(a.name for a in axes_) if axes else "guidance")
    out = out if out is not None else run_dir_of(run_path) / default
    swept = "; ".join(f"{a.name} in {', '.join(f'{v:g}' for v in a.values)}" for a in axes_)
    how = sampling.sampler if sampling.steps is None else f"{sampling.sampler}-{sampling.steps}"
    reporter.say(f"sweep of {run.checkpoint}: {swept}; {sampling.num} images per point with "
                 f"{how} ({sampling.guidance_method} guidance); results in {out}")
    with LogToReporter(reporter):
        result = sampling_sweep(run, axes_, out_dir=out, sampling=sampling, eval_options=options, select=select,
                                on_status=reporter.status)
    _report(result, out, reporter)


def _sweep_settings(grid: Optional[str], axes: tuple[str, ...], ema: bool, rest: dict[str, Any]):
    """The base sampling settings, the axes as given (``(NAME, values)``, w last) and which
    settings the user fixed by a flag; pops the sampling flags from ``rest``."""
    from cbdm_core.experiments.sweep_axes import parse_axis
    from cbdm_core.experiments.sweeps import parse_grid

    specs = [parse_axis(a) for a in axes]
    if grid is not None and any(name in ("w", "guidance") for name, _ in specs):
        raise CbdmError("give the guidance strengths once: --grid or --axis w=...")
    ws = parse_grid(grid if grid is not None else ("0" if specs else DEFAULT_GRID))
    if any(w < 0 for w in ws):
        raise CbdmError("guidance strengths must be >= 0")
    if not specs or len(ws) > 1:
        specs.append(("guidance", ws))
    sampling = sampling_settings_from_options(rest, flags={"guidance": ("--grid",)}, guidance=ws[0], ema=ema)
    for w in ws[1:]:  # every strength within the settings' bounds, as cbdm sample's -w
        checked_value(sampling, "guidance", w, flags={"guidance": ("--grid",)})
    ctx = click.get_current_context()
    flags = {"guidance_method": "guidance_method", "sampler": "sampler", "steps": "steps", "eta": "eta"}
    given = {k for k, param in flags.items()
             if ctx.get_parameter_source(param) not in (None, click.core.ParameterSource.DEFAULT)}
    given |= {f"guidance_option:{k}" for k in sampling.guidance_options}
    given |= {f"sampler_option:{k}" for k in sampling.sampler_options}
    return sampling, specs, given


def _resolve_axes(specs, sampling, given: set[str], T: int):
    """The resolved axes, and the base settings with the guidance or sampler they name and the
    sampler's steps resolved (after the axes: ``ddpm.boost_gamma`` picks ddpm and its T steps)."""
    from cbdm_core.experiments.sweep_axes import resolve_axes
    from cbdm_core.sampling.api import resolve_steps

    axes, sampling = resolve_axes(specs, sampling, given=sorted(given))
    if not any(a.kind == "steps" for a in axes):
        sampling = sampling.model_copy(update={"steps": resolve_steps(sampling.sampler, sampling.steps, T)})
    return axes, sampling


def _training_options(f):
    decorators = [
        click.option("--preset", help="Training preset (default: quickstart when no --config is given)."),
        click.option("--config", type=click.Path(path_type=Path), help="Training configuration file."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any training config field."),
        click.option("--train-steps", type=int, help="Training steps of every run."),
        click.option("--train-seed", type=int, help="Training seed of every run."),
        click.option("--dataset", help="Training (and evaluation) dataset."),
        click.option("--data-root", type=click.Path(path_type=Path), help="Dataset folder."),
        sampling_options(("guidance",), flags={"guidance": ("--guidance",)},
                         helps={"guidance": "Sampling guidance w of every run."}),
    ]
    for decorate in reversed(decorators):
        f = decorate(f)
    return _sampling_options(f)


def _log_line(rec: dict[str, Any]) -> str:
    """A training record as a status line (an evaluation record, or one with every step skipped, has no loss)."""
    from cbdm_core.training.monitor import evaluation_line, is_evaluation

    if is_evaluation(rec):
        return f"  {evaluation_line(rec)}"
    loss = f"loss {rec['total']:.4f}" if "total" in rec else f"{rec.get('skipped_steps', 0)} steps skipped"
    return f"  step {rec['step']}: {loss}"


def _run_training_sweep(parameter: str, values: list, config_for, *, data_root: Optional[Path], guidance: float,
                        metrics: str, select: str, device: str, out: Path, **features: Any) -> None:
    """Train, sample and evaluate one run per value (shared by ``sweep option`` and ``sweep tau``)."""
    from cbdm_core.device import resolve_device
    from cbdm_core.experiments.sweeps import SweepInterrupted, training_sweep
    from cbdm_core.sampling.api import resolve_sampling

    reporter = Reporter()
    _check_select(select, metrics)
    sampling = sampling_settings_from_options(features, flags={"guidance": ("--guidance",)}, guidance=guidance)
    sampling = resolve_sampling(sampling).settings  # a typo fails before any training
    base = config_for(values[-1])
    root = data_root if data_root is not None else base.data.root
    options = _eval_options(base.data.dataset, None if root is None else Path(root), metrics, device=device,
                            on_status=reporter.status, **features)
    reporter.say(f"{parameter} sweep: {', '.join(f'{v:g}' for v in values)}; {base.optim.steps} training steps "
                 f"each on {base.data.dataset}; results in {out}")
    try:
        with LogToReporter(reporter):
            result = training_sweep(parameter, values, config_for, out_dir=out, sampling=sampling,
                                    eval_options=options, select=select, device=str(resolve_device(device)),
                                    on_status=reporter.status,
                                    on_log=lambda rec: reporter.status(_log_line(rec)))
    except SweepInterrupted as exc:
        reporter.say(f"{exc}; re-run the same command to continue")
        raise SystemExit(130)
    _report(result, out, reporter)


def numeric_option(parameter: str) -> tuple[str, str, type]:
    """``"cbdm.tau"`` -> ``("cbdm", "tau", float)``; one-line errors for anything not sweepable."""
    from cbdm_core.methods.options import describe_options

    from .method_options import check_option, method_spec

    method, dot, key = parameter.partition(".")
    if not dot or not key:
        raise CbdmError(f"sweep option takes METHOD.OPTION (e.g. cbdm.tau), got {parameter!r}")
    check_option(method, key)
    row = next(o for o in describe_options(method_spec(method).options_model) if o["name"] == key)
    if not row["numeric"]:
        raise CbdmError(f"option {parameter} is {row['type']}, not a number; only numeric options can be swept")
    return method, key, int if row["type"].startswith("int") else float


@sweep_group.command("option")
@click.argument("parameter", metavar="METHOD.OPTION")
@click.option("--values", "values", required=True, help="A list like 0,0.5,1 or start:stop:step.")
@click.option("--method", "methods", multiple=True, metavar="NAME",
              help="Training method(s) of every run [default: the config's]; must include METHOD.")
@_training_options
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Sweep folder.")
def option_cmd(parameter: str, values: str, methods: tuple[str, ...], preset: Optional[str],
               config: Optional[Path], sets: tuple[str, ...], train_steps: Optional[int],
               train_seed: Optional[int], dataset: Optional[str], data_root: Optional[Path], **rest: Any) -> None:
    """Train one run per value of any numeric method option (same config, seed and steps otherwise),
    then sample and evaluate each."""
    from cbdm_core.experiments.sweeps import parse_grid

    from .train_cmd import build_config

    method, key, kind = numeric_option(parameter)
    grid = parse_grid(values)
    if kind is int and any(v != int(v) for v in grid):
        raise CbdmError(f"option {parameter} takes whole numbers")
    opts = {"steps": train_steps, "seed": train_seed, "dataset": dataset, "data_root": data_root,
            "method": methods}

    def config_for(value: float):
        item = f"{parameter}={int(value) if kind is int else value}"
        return build_config(config, preset, {**opts, "method_opts": (item,)}, sets)

    _run_training_sweep(parameter, grid, config_for, data_root=data_root, **rest)


@sweep_group.command("tau")
@click.option("--values", "values", required=True, help="tau values: a list like 0,0.0005,0.001,0.002 or "
              "start:stop:step. tau = 0 trains plain DDPM.")
@_training_options
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Sweep folder.")
def tau_cmd(values: str, preset: Optional[str], config: Optional[Path], sets: tuple[str, ...],
            train_steps: Optional[int], train_seed: Optional[int], dataset: Optional[str],
            data_root: Optional[Path], **rest: Any) -> None:
    """CBDM shorthand of `cbdm sweep option cbdm.tau`, where tau = 0 trains plain DDPM (--method ddpm)."""
    from cbdm_core.experiments.sweeps import parse_grid

    from .train_cmd import build_config

    taus = parse_grid(values)
    if any(t < 0 for t in taus):
        raise CbdmError("tau values must be >= 0")
    opts = {"steps": train_steps, "seed": train_seed, "dataset": dataset, "data_root": data_root}

    def config_for(tau: float):
        if tau == 0:
            return build_config(config, preset, {**opts, "method": ("ddpm",)}, sets)
        return build_config(config, preset, {**opts, "tau": tau}, sets)

    _run_training_sweep("tau", taus, config_for, data_root=data_root, **rest)
