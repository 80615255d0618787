"""Pieces shared by the commands that evaluate samples (``cbdm eval``, ``cbdm sweep``):
the stderr reporter, metric-option parsing and the feature-extractor options."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import click
import yaml
from rich.console import Console

from cbdm_core.errors import CbdmError
from cbdm_core.safe_yaml import load_yaml


def feature_options(f: Callable) -> Callable:
    """The options that choose the feature network, the metric options and the reference set
    (``--metrics`` stays with each command: their defaults differ)."""
    decorators = [
        click.option("--extractor",
                     help="Feature network: inception or classifier [default: classifier for digits(-lt) and "
                          "mnist(-lt), trained once into the cache folder; inception for the others]."),
        click.option("--classifier", type=click.Path(path_type=Path),
                     help="Classifier file for --extractor classifier (from `cbdm eval train-classifier`)."),
        click.option("--inception-weights", type=click.Path(path_type=Path),
                     help="Local Inception weights file (default $CBDM_INCEPTION_WEIGHTS, else download)."),
        click.option("--metric-option", "-O", "metric_options", multiple=True, metavar="METRIC.OPTION=VALUE",
                     help="A metric's own option, e.g. kid.subset_size=100 (repeatable)."),
        click.option("--reference-split", type=click.Choice(["auto", "train", "test"]), default="auto",
                     show_default=True,
                     help="Real split compared against, subsampled to equal class counts; auto: a folder "
                          "dataset's test/ images when it has them, else train."),
        click.option("--cache-dir", type=click.Path(path_type=Path),
                     help="Reference feature cache [default: $CBDM_CACHE or ~/.cache/cbdm]."),
    ]
    for decorate in reversed(decorators):
        f = decorate(f)
    return f


def choose_extractor(extractor: str | None, classifier: Path | None, dataset: str, data_root: Path | None,
                     cache_dir: Path | None, device: str, on_status: Callable[[str], None]) -> tuple[str, Path | None]:
    """``(extractor, classifier file)``: the user's choice, else the dataset's default
    (:func:`~cbdm_core.features.auto_classifier.default_extractor`); a default classifier is
    trained on first use. A ``--classifier`` file alone means ``--extractor classifier``."""
    if extractor is not None:
        if classifier is not None and extractor != "classifier":  # it was silently ignored
            raise CbdmError(f"--classifier is the file of --extractor classifier; --extractor {extractor} "
                            "takes none (drop one of them)")
        return extractor, classifier
    if classifier is not None:
        return "classifier", classifier
    from cbdm_core.features.auto_classifier import default_extractor, shared_classifier

    chosen = default_extractor(dataset)
    if chosen != "classifier":
        return chosen, None
    from cbdm_core.device import resolve_device
    from cbdm_core.evaluation.reference import default_cache_dir

    path = shared_classifier(dataset, data_root, cache_dir if cache_dir is not None else default_cache_dir(),
                             device=resolve_device(device), on_status=on_status)
    on_status(f"features: the {dataset} classifier {path} (Inception is for natural images; "
              "--extractor inception to use it)")
    return chosen, path


class Reporter:
    """Status and warnings on stderr; each distinct warning once (logging and ``warnings``
    often carry the same message)."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self.seen: set[str] = set()

    def say(self, message: str, style: str = "") -> None:
        self.console.print(message, markup=False, highlight=False, soft_wrap=True, style=style or None)

    def status(self, message: str) -> None:
        self.say(message, style="dim")

    def warning(self, message: str) -> None:
        if message in self.seen:
            return
        self.seen.add(message)
        self.say(f"warning: {message}", style="bold yellow")


class LogToReporter(logging.Handler):
    """Warnings logged under ``cbdm`` go to the reporter (use as a context manager)."""

    def __init__(self, reporter: Reporter) -> None:
        super().__init__(logging.WARNING)
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        self.reporter.warning(record.getMessage())

    def __enter__(self) -> "LogToReporter":
        logging.getLogger("cbdm").addHandler(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger("cbdm").removeHandler(self)


def parse_metric_options(items: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``("kid.subset_size=100",)`` -> ``{"kid": {"subset_size": 100}}`` (values parsed as YAML)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        metric, dot, option = key.strip().partition(".")
        if not sep or not dot or not metric or not option:
            raise CbdmError(f"--metric-option expects METRIC.OPTION=VALUE (e.g. kid.subset_size=100), got {item!r}")
        try:
            value = load_yaml(raw, f"--metric-option {key.strip()}") if raw else ""
        except yaml.YAMLError:
            value = raw
        out.setdefault(metric, {})[option] = value
    return out


def split_metrics(text: str | None) -> list[str] | None:
    """``"fid,is"`` -> ``["fid", "is"]``; ``None`` stays ``None`` (the default set)."""
    if text is None:
        return None
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise CbdmError("--metrics is empty")
    return names
