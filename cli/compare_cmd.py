"""``cbdm compare PROTOCOL --out DIR``: every method of a protocol, trained on every seed,
sampled, evaluated and summarised (see docs/compare.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cbdm_core.errors import CbdmError

from .default_group import DEFAULT_CMD, DefaultCommand, DefaultGroup
from .eval_support import LogToReporter, Reporter
from .overrides import parse_key_values


class _PlainObserver:
    """Plain lines (a log file, CI): one per part, and sparse progress within a part."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter, self.total, self._last = reporter, 0, -1

    def plan(self, parts) -> None:
        self.total = len(parts)

    def start(self, index: int, part, skipped: bool) -> None:
        self._last = -1
        state = "done, skipped" if skipped else "running"
        self.reporter.say(f"[{index + 1}/{self.total}] {part.label} ({state})")

    def advance(self, done: float, total: float) -> None:
        tenth = int(10 * done / total) if total else 0
        if tenth > self._last:  # at most ten lines per part
            self._last = tenth
            self.reporter.status(f"  {int(done)}/{int(total)}")

    def status(self, message: str) -> None:
        self.reporter.status(message)


class _RichObserver(_PlainObserver):
    """A live view: the whole study as one bar (parts), the current part as a second."""

    def __init__(self, reporter: Reporter) -> None:
        super().__init__(reporter)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed:.0f}/{task.total:.0f}"), TimeElapsedColumn(),
                                 console=reporter.console)
        self.study = self.progress.add_task("study", total=1)
        self.part = self.progress.add_task("", total=1)

    def plan(self, parts) -> None:
        super().plan(parts)
        self.progress.update(self.study, total=len(parts), completed=0)
        self.progress.start()

    def start(self, index: int, part, skipped: bool) -> None:
        self.progress.update(self.study, completed=index + (1 if skipped else 0))
        self.progress.update(self.part, description=part.label, completed=1 if skipped else 0, total=1)

    def advance(self, done: float, total: float) -> None:
        self.progress.update(self.part, completed=done, total=total)

    def status(self, message: str) -> None:
        self.progress.console.print(message, markup=False, highlight=False, style="dim")

    def stop(self) -> None:
        self.progress.stop()


def _list() -> None:
    from cbdm_core.experiments.protocol import protocol_description, protocol_names

    table = Table(title="shipped protocols (cbdm compare NAME --out DIR)", show_edge=False)
    table.add_column("name")
    table.add_column("description")
    for name in protocol_names():
        table.add_row(name, protocol_description(name))
    Console().print(table)


def _seeds(by_seed: dict[int, int]) -> str:
    return ", ".join(f"{t}->{s}" for t, s in by_seed.items())


def _print_plan(plan) -> None:
    """What the study will do, resolved, without training anything."""
    from cbdm_core.experiments.arms import arm_summary

    p = plan.protocol
    click.echo(f"protocol {p.name}: {p.data.dataset}" + (f" imb {p.data.imb_factor}" if p.data.imb_factor else ""))
    for label, entry in plan.entries.items():
        if not entry.trains:
            arm = (arm_summary(entry) or {}).get("sampling")
            tc = entry.train_classifier
            what = ("trains no weights; trains its classifier per run with "
                    f"{tc.model_dump(exclude_defaults=True)}" if tc is not None else "trains nothing")
            click.echo(f"  sampling arm {label}: samples {entry.sample_from}'s runs ({what}) with {arm}")
            continue
        cfg = plan.configs[(label, p.seeds[0])]
        methods = ", ".join(f"{m.name} {m.options}" if m.options else m.name
                            for m in cfg.objective.methods) or "none (DDPM)"
        mark = " (baseline)" if label == p.baseline_label else ""
        start = f", starting from {entry.init_from}'s weights" if entry.init_from else ""
        click.echo(f"  method {label}{mark}: {methods}; {cfg.model.backbone} {cfg.model.options}; "
                   f"{cfg.optim.steps} steps{start}, batch {cfg.optim.batch_size}, lr {cfg.optim.lr}")
    click.echo(f"  seeds {', '.join(map(str, p.seeds))}; {p.sampling.sampler}-{p.sampling.steps or 'default'}, "
               f"{p.sampling.num} images per set ({p.sampling.classes})")
    if p.selecting():
        click.echo(f"  w from {', '.join(f'{w:g}' for w in p.guidance.values)} by {p.guidance.select} "
                   f"({plan.directions[p.guidance.select]} is better) on selection samples; sampling seeds "
                   f"per training seed: selection {_seeds(plan.seeds['select'])}, report {_seeds(plan.seeds['report'])}")
    else:
        curve = f", curve w {', '.join(f'{w:g}' for w in p.guidance.curve_values)}" if p.guidance.curve else ""
        click.echo(f"  fixed w {p.guidance.values[0]:g} for every method{curve}; report sampling seeds per training seed "
                   f"{_seeds(plan.seeds['report'])}")
    click.echo(f"  metrics {', '.join(plan.eval_metrics)} ({p.evaluation.extractor} features)")
    for v in p.primary:
        click.echo(f"  primary endpoint {v} ({plan.directions[v]} is better)")
    parts = plan.parts()
    kinds = {k: sum(1 for x in parts if x.kind == k) for k in ("train", "classifier", "select", "report", "curve")}
    clf = f"{kinds['classifier']} arm classifiers, " if kinds["classifier"] else ""
    click.echo(f"  {len(parts)} parts: {kinds['train']} runs, {clf}{kinds['select']} selection sets, "
               f"{kinds['report']} report sets, {kinds['curve']} curve sets; folder {plan.out_dir}")


class _CompareGroup(DefaultGroup):
    default_usage = "PROTOCOL --out DIR [OPTIONS]"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # `cbdm compare` alone runs the default command, which says what it needs
        return super().parse_args(ctx, args or [DEFAULT_CMD])


@click.group("compare", cls=_CompareGroup)
def compare() -> None:
    """Compare training methods under one protocol (a YAML file or a shipped protocol's name):
    train every method on every seed, sample the report seed at the protocol's w (and the
    w-curve), evaluate, and write compare.json, compare.md and plots. A re-run continues where
    an interrupted one stopped. `cbdm compare merge A B --out STUDY` joins shards run with
    different --seeds on different machines."""


@compare.command(DEFAULT_CMD, cls=DefaultCommand, hidden=True)
@click.argument("protocol", required=False, metavar="PROTOCOL")
@click.option("--out", "-o", type=click.Path(path_type=Path), help="Study folder (results, runs, samples).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a protocol field, e.g. training.steps=100 or seeds=[0,1] (values read as YAML).")
@click.option("--seeds", "seeds", metavar="S,S,...",
              help="Run only these training seeds (a shard of the study; join shards with `cbdm compare merge`).")
@click.option("--dry-run", is_flag=True, help="Resolve and check everything, print the plan, train nothing.")
@click.option("--list", "list_", is_flag=True, help="List the shipped protocols.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train this many runs at once, each in its own process with an equal share of the "
                   "threads (small CPU protocols train faster as 1-thread runs side by side); sampling "
                   "and evaluation then use the workers' threads together.")
@click.option("--overwrite", is_flag=True,
              help="Regenerate kept sample sets whose guidance file (a classifier) changed since they were "
                   "sampled (without it such a set is refused); everything else is kept.")
@click.option("--progress/--no-progress", default=None,
              help="Live progress view [default: on in a terminal, plain lines otherwise].")
def run_compare(protocol: Optional[str], out: Optional[Path], sets: tuple[str, ...], seeds: Optional[str],
                dry_run: bool, list_: bool, progress: Optional[bool], jobs: int, overwrite: bool) -> None:
    """Compare training methods under one protocol (a YAML file or a shipped protocol's name):
    train every method on every seed, choose w per method on a selection seed, sample the report
    seed, evaluate, and write compare.json, compare.md and plots. A re-run continues where an
    interrupted one stopped."""
    from cbdm_core.experiments.compare import StudyInterrupted, plan_study, run_study
    from cbdm_core.experiments.compare_report import COMPARE_JSON, COMPARE_MD

    if list_:
        _list()
        return
    if protocol is None:
        raise CbdmError("give a PROTOCOL file or name (cbdm compare --list shows the shipped ones)")
    from cbdm_core.experiments.protocol import load_protocol

    overrides = parse_key_values(sets, "--set")
    if seeds is not None:
        overrides["seeds"] = _seed_list(seeds)
    proto = load_protocol(protocol, overrides)
    if dry_run:
        plan = plan_study(proto, out if out is not None else Path("DIR"))
        if out is not None:  # what the real run would refuse about the folder, without writing to it
            from cbdm_core.experiments.compare_folder import check_folder_readonly

            check_folder_readonly(plan)
        _print_plan(plan)
        return
    if out is None:
        raise CbdmError("--out DIR is needed: the study folder")
    reporter = Reporter()
    live = reporter.console.is_terminal if progress is None else progress
    observer: Any = _RichObserver(reporter) if live else _PlainObserver(reporter)
    try:
        with LogToReporter(reporter):
            doc = run_study(proto, out, observer=observer, jobs=jobs, overwrite=overwrite)
    except StudyInterrupted as exc:
        reporter.say(f"{exc}; re-run the same command to continue")
        raise SystemExit(130)
    except KeyboardInterrupt:
        reporter.say("interrupted; finished parts are kept, re-run the same command to continue")
        raise SystemExit(130)
    finally:
        if isinstance(observer, _RichObserver):
            observer.stop()
    for label, m in doc["methods"].items():
        click.echo(f"{label}: w = {m['guidance']['chosen']:g}")
    timed = doc.get("study_time")
    if timed:
        from cbdm_core.experiments.study_time import time_split

        click.echo(f"wall time ({timed['calls']} call(s)): {time_split(timed)}")
    click.echo(f"wrote {out / COMPARE_JSON}, {out / COMPARE_MD} and {len(doc['plots'])} plot(s)")
    if sys.stdout.isatty():
        click.echo((out / COMPARE_MD).read_text())


def _seed_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CbdmError(f"--seeds takes comma-separated integers (e.g. 0,1), got {text!r}") from None


@compare.command("merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="SHARD...")
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="The merged study folder.")
def merge(shards: tuple[Path, ...], out: Path) -> None:
    """Join study shards (the same protocol run with different --seeds, perhaps on other
    machines) into one study: the report is rebuilt from the shards' per-sample records and
    metrics (no checkpoints needed). Shards whose protocol, code version or classifier differ
    are refused."""
    from cbdm_core.experiments.compare_report import COMPARE_JSON, COMPARE_MD
    from cbdm_core.experiments.merge import merge_studies

    reporter = Reporter()
    doc = merge_studies(list(shards), out, status=reporter.status)
    click.echo(f"merged {len(shards)} shards (seeds {', '.join(map(str, doc['protocol']['seeds']))}); wrote "
               f"{out / COMPARE_JSON}, {out / COMPARE_MD} and {len(doc['plots'])} plot(s)")


@compare.command("pack")
@click.argument("study", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True,
              help="A new (or empty) folder for the packed outputs.")
def pack(study: Path, out: Path) -> None:
    """Copy a finished study shard's small outputs (protocol, reports, records, metrics,
    manifests, the feature classifier, plots; no checkpoints or sample images) into OUT, to
    commit them or carry them to the machine that runs `cbdm compare merge`."""
    from cbdm_core.experiments.pack import pack_study

    files = pack_study(study, out, status=Reporter().status)
    size = sum((out / f).stat().st_size for f in files)
    click.echo(f"packed {len(files)} files ({size / 1e6:.1f} MB) of {study} into {out}")
