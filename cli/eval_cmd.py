"""``cbdm eval``: metrics of generated samples, and ``cbdm eval train-classifier``.

``cbdm eval SAMPLES --dataset NAME`` evaluates; ``cbdm eval train-classifier ...`` trains
the dataset-specific feature classifier. The group sends any first argument that is not
a sub-command to a hidden evaluation command, so both forms work.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import click
from rich.console import Console

from cbdm_core.errors import CbdmError

from .default_group import DEFAULT_CMD, DefaultCommand, DefaultGroup
from .eval_heldout import HELDOUT_FILE, describe_row, has_memorization, heldout_row
from .eval_paper import PAPER_HELP, finish_paper, paper_callback, start_paper
from .eval_support import (LogToReporter, Reporter, choose_extractor, feature_options, parse_metric_options,
                           split_metrics)

if TYPE_CHECKING:
    from cbdm_core.evaluation import EvalResult
    from cbdm_core.evaluation.paper_settings import PaperSettings

METRIC_HELP = "fid,is,kid,precision_recall,density_coverage,prd,per_class_fid,per_class,memorization"


class _EvalGroup(DefaultGroup):
    default_usage = "SAMPLES [OPTIONS]"


def default_out(samples: Path) -> Path:
    """The samples folder itself, or ``<name>-eval/`` next to an ``.npz`` file."""
    return samples.parent / f"{samples.stem}-eval" if samples.is_file() else samples


@click.group("eval", cls=_EvalGroup, invoke_without_command=False)
def eval_group() -> None:
    """Evaluate generated samples against the class-balanced real data of a dataset
    (FID, IS, KID, precision/recall, PRD, per-class FID with head/medium/tail averages),
    or train the dataset-specific feature classifier (train-classifier).

    SAMPLES is a `cbdm sample` folder, a folder of png/jpg files (labels from class
    sub-folders when present) or an .npz with `images` (uint8 NHWC) and optional `labels`.
    """


@eval_group.command(DEFAULT_CMD, cls=DefaultCommand, hidden=True)
@click.argument("samples", metavar="SAMPLES", type=click.Path(path_type=Path))
@click.option("--dataset", help="Dataset the model was trained on (digits, cifar10-lt, ...); needed only when "
                                "SAMPLES does not come from `cbdm sample` [default: read from the run].")
@click.option("--data-root", type=click.Path(path_type=Path),
              help="Folder holding the dataset files [default: the run's].")
@click.option("--metrics", "metrics", help=f"Comma-separated metrics [default: {METRIC_HELP}].")
@feature_options
@click.option("--reference-folder", type=click.Path(path_type=Path),
              help="Your own reference images (DIR/<class>/*.png), used as given instead of the dataset's.")
@click.option("--reference-stats", type=click.Path(path_type=Path),
              help="FID statistics .npz with mu/sigma (pytorch-ddpm/EDM layout, e.g. cifar10.train.npz): "
                   "FID is computed against them.")
@click.option("--batch-size", type=int, default=200, show_default=True, help="Images per extractor batch.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--out", "-o", type=click.Path(path_type=Path),
              help="Report folder [default: SAMPLES, or <name>-eval/ next to an .npz].")
@click.option("--resize", is_flag=True, help="Resize (and convert channels of) samples to the reference's shape.")
@click.option("--paper", metavar="NAME", callback=paper_callback, help=PAPER_HELP)
def evaluate_samples(samples: Path, dataset: Optional[str], data_root: Optional[Path], extractor: Optional[str],
                     classifier: Optional[Path], inception_weights: Optional[Path], metrics: Optional[str],
                     metric_options: tuple[str, ...], reference_split: str, cache_dir: Optional[Path],
                     reference_folder: Optional[Path], reference_stats: Optional[Path], batch_size: int,
                     device: str, out: Optional[Path], resize: bool, paper: Optional["PaperSettings"]) -> None:
    """Evaluate SAMPLES against the class-balanced real set of the run's dataset (or --dataset).

    Under torchrun (torchrun --nproc_per_node N -m cli eval ...) the reference features, when
    not cached yet, are extracted by all processes, each a contiguous index range; process 0
    then evaluates and writes the report."""
    from cbdm_core.atomic import check_folder_writable
    from cbdm_core.build_evaluation import resolve_evaluation
    from cbdm_core.device import resolve_device, setup_distributed
    from cbdm_core.evaluation import EvalOptions, evaluate, metrics_table
    from cbdm_core.evaluation.prepared import prepare_reference

    ctx = setup_distributed(resolve_device(device))
    try:
        reporter = Reporter()
        reporter.console.quiet = not ctx.is_main  # under torchrun only rank 0 talks
        data = run_data(samples, dataset, data_root, reporter)
        run, extractor_flag, reference_split, metrics = start_paper(  # --classifier alone: --extractor classifier
            paper, data["dataset"], extractor or ("classifier" if classifier else None), reference_split, metrics,
            reference_stats, reference_folder, reporter)
        classifier_flag = classifier
        out_dir = out if out is not None else default_out(samples)
        check_folder_writable(out_dir, "report folder")  # before any work
        # Rank 0 trains a default classifier first; the others then find its file.
        extractor, classifier = ctx.main_first(lambda: choose_extractor(
            extractor_flag, classifier_flag, data["dataset"], data.get("root"), cache_dir, device, reporter.status))
        options = EvalOptions(
            dataset=data["dataset"], data_root=data.get("root"), extractor=extractor, classifier=classifier,
            inception_weights=inception_weights, metrics=split_metrics(metrics),
            metric_options=parse_metric_options(metric_options), reference_split=reference_split,
            cache_dir=cache_dir, batch_size=batch_size, device=device, resize=resize,
            reference_folder=reference_folder, reference_stats=reference_stats,
            classes=data.get("classes"), class_order=data.get("class_order") or "name", image_size=data.get("resize"))
        _warn_unused_metric_options(options, reporter)
        with LogToReporter(reporter):
            components = resolve_evaluation(options)  # every name checked once, before any loading
            prepared = prepare_reference(options, components, on_status=reporter.status, ctx=ctx) if ctx.enabled else None
            if not ctx.is_main:
                return
            result = evaluate(samples, options, components=components, reference=prepared,
                              on_warning=reporter.warning, on_status=reporter.status)
            finish_paper(run, result, reporter)
            heldout = (heldout_row(result, options, prepared, samples, out_dir, reporter.status, reporter.warning)
                       if has_memorization(result) else None)
        say_reference(result, reporter)
        Console().print(metrics_table(result))
        json_path, plot = _write_report(result, out_dir, heldout)
        if not result.extractor.comparable:
            reporter.warning(f"{result.extractor.note}")
        if heldout is not None:
            reporter.say(describe_row(heldout))
        click.echo(f"wrote {json_path}" + (f" and {plot}" if plot is not None else "")
                   + (f" and {heldout}" if heldout is not None else ""))
        click.echo(next_command(data.get("checkpoint")))
    finally:
        ctx.close()


def _warn_unused_metric_options(options: "EvalOptions", reporter: Reporter) -> None:
    """An ``-O`` option of a metric that --metrics leaves out is ignored: say so (it was silent). A warning,
    not an error, so one set of -O options can serve several --metrics choices."""
    unused = sorted(set(options.metric_options) - set(options.metrics)) if options.metrics is not None else []
    if unused:
        reporter.warning(f"-O options of {', '.join(unused)} are ignored: not among --metrics")


def _write_report(result: "EvalResult", out_dir: Path, heldout: Optional[Path]) -> tuple[Path, Optional[Path]]:
    """metrics.json (with records.csv) and the per-class plot; what an earlier evaluation into this folder
    wrote and this one does not (the plot, the held-out file) is removed, so the folder is one evaluation."""
    from cbdm_core.evaluation import plot_per_class_fid, write_metrics_json
    from cbdm_core.evaluation.report import METRICS_JSON, PER_CLASS_PLOT

    json_path = write_metrics_json(result, out_dir / METRICS_JSON)
    plot = plot_per_class_fid(result, out_dir / PER_CLASS_PLOT)
    for name, written in ((PER_CLASS_PLOT, plot), (HELDOUT_FILE, heldout)):
        if written is None:
            (out_dir / name).unlink(missing_ok=True)
    return json_path, plot


def say_reference(result: "EvalResult", reporter: Reporter) -> None:
    """The reference's description and, for an FID statistics file, its note."""
    reporter.say(f"reference: {result.reference['description']}", style="dim")
    if "fid_statistics" in result.reference:
        reporter.say(result.reference["fid_statistics"]["note"], style="dim")


def next_command(checkpoint: Optional[str]) -> str:
    """What to run after an evaluation: the guidance sweep of the run that made the samples,
    else the comparison of methods (every command ends by naming the next one)."""
    if checkpoint is None:
        return "next: cbdm compare --list   (protocols that train and evaluate several methods alike)"
    ckpt = Path(checkpoint)
    from cbdm_core.run_folder import RunFolder  # lazy: `cbdm --help` loads no torch

    run = RunFolder.of(ckpt).path
    return f"next: cbdm sweep {run} --grid 0:2:0.5   (FID and IS over the guidance strength w)"


def run_data(samples: Path, dataset: Optional[str], data_root: Optional[Path], reporter: Reporter) -> dict:
    """Dataset, data root and class selection: the flags, else the training config of the run
    whose checkpoint the samples' manifest names (a flag overrides that run's value)."""
    from cbdm_core.evaluation.inputs import run_data_of

    if not Path(samples).exists():
        raise CbdmError(f"{samples} does not exist")
    found = run_data_of(samples) or {}
    if dataset is None and not found:
        raise CbdmError(f"--dataset is needed: {samples} is not a `cbdm sample` folder whose manifest names a "
                        "readable checkpoint")
    if found and (dataset is None or dataset == found["dataset"]):
        if dataset is None:
            reporter.status(f"dataset {found['dataset']} from {found['checkpoint']}")
        root = data_root if data_root is not None else found.get("root")
        if root is not None and not Path(root).exists() and data_root is None:
            reporter.warning(f"the run's data root {root} does not exist here; pass --data-root")
        return {**found, "root": None if root is None else Path(root)}
    return {"dataset": dataset, "root": data_root}


@eval_group.command("train-classifier")
@click.option("--dataset", required=True, help="Dataset whose real training images to learn (the LT version "
                                                "for an -lt name).")
@click.option("--data-root", type=click.Path(path_type=Path), help="Folder holding the dataset files.")
@click.option("--balanced/--no-balanced", default=True, show_default=True,
              help="Re-sample batches so every class is equally frequent.")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Peak learning rate (AdamW, one-cycle).")
@click.option("--random-shift", is_flag=True, help="Augment with random translations.")
@click.option("--hflip", is_flag=True, help="Augment with horizontal flips (not for digits).")
@click.option("--out", "-o", type=click.Path(path_type=Path),
              help="Classifier file [default: classifier-<dataset>.safetensors; for a folder "
                   "classifier-folder-<name>-<hash of its path>.safetensors].")
@click.option("--holdout", type=float, default=0.1, show_default=True,
              help="Share of each class held out for the test accuracy when the data has no test split.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--class-order", type=click.Choice(["name", "count"]), default="name", show_default=True,
              help="A folder dataset's class order, as the run's data.class_order (the class index must match).")
@click.option("--image-size", type=int, default=None,
              help="Resize the images to this side first, as a run's data.resize (the classifier takes that size).")
def train_classifier_cmd(dataset: str, data_root: Optional[Path], balanced: bool, epochs: int, batch_size: int,
                         lr: float, random_shift: bool, hflip: bool, out: Optional[Path], holdout: float, seed: int,
                         device: str, class_order: str, image_size: Optional[int]) -> None:
    """Train the feature classifier on the real training images of --dataset."""
    from cbdm_core.atomic import check_writable
    from cbdm_core.device import resolve_device
    from cbdm_core.data import dataset_options, load_dataset
    from cbdm_core.data.common import split_holdout
    from cbdm_core.features import classifier_accuracy, save_classifier, train_classifier

    reporter = Reporter()
    if epochs < 1 or batch_size < 1:
        raise CbdmError(f"--epochs and --batch-size must be positive, got {epochs} and {batch_size}")
    path = out if out is not None else default_classifier_path(dataset, data_root)
    check_writable(path, "classifier file")  # before training, not after
    dev = resolve_device(device)
    train = load_dataset(dataset, dataset_options(root=data_root, split="train", class_order=class_order,
                                                  resize=image_size))
    try:
        test = load_dataset(dataset, dataset_options(root=data_root, split="test", class_order=class_order,
                                                     resize=image_size))
        test_what = f"{dataset} test images"
    except CbdmError as exc:
        train, test = split_holdout(train, holdout, seed)
        test_what = f"held-out {dataset} images ({holdout:g} of each class, seed {seed})"
        reporter.status(f"no test split ({exc}); holding out {len(test)} training images for the test accuracy")
        if len(test) == 0:
            test = None
            reporter.warning("every class has a single image: nothing to hold out, no test accuracy")
    counts = train.class_counts.tolist()
    reporter.say(f"training on {len(train)} {dataset} images, {train.num_classes} classes "
                 f"(counts {min(counts)}..{max(counts)}), {'balanced' if balanced else 'plain'} sampling, "
                 f"{epochs} epoch(s) on {dev}")

    def progress(epoch: int, loss: float) -> None:
        reporter.say(f"epoch {epoch + 1}/{epochs}: loss {loss:.4f}", style="dim")

    model = train_classifier(train.images, train.labels, train.num_classes, epochs=epochs, batch_size=batch_size,
                             lr=lr, balanced=balanced, seed=seed, device=dev, random_shift=random_shift,
                             hflip=hflip, progress=progress)
    accuracy = None
    if test is not None:
        if test.num_classes != train.num_classes:
            raise CbdmError(f"{dataset}: the test split has {test.num_classes} classes, the train split "
                            f"{train.num_classes}")
        accuracy = classifier_accuracy(model, test.images, test.labels)
    save_classifier(model, path, {"dataset": dataset, "class_names": train.class_names, "class_counts": counts,
                                  "test_accuracy": accuracy, "lr": lr})
    if accuracy is not None:
        click.echo(f"test accuracy {accuracy:.4f} on {len(test)} {test_what}")
    click.echo(f"wrote {path}")
    click.echo(f"next: cbdm eval SAMPLES --extractor classifier --classifier {path}")


def default_classifier_path(dataset: str, data_root: Optional[Path]) -> Path:
    """``classifier-<dataset>.safetensors``; a folder's name carries its folder name and a hash
    of its absolute path, so two folders never overwrite each other's classifier."""
    import hashlib

    if dataset != "folder" or data_root is None:
        return Path(f"classifier-{dataset}.safetensors")
    root = Path(data_root).expanduser().resolve()
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    return Path(f"classifier-folder-{root.name}-{digest}.safetensors")


def _add_downstream() -> None:
    from .downstream_cmd import downstream_cmd

    eval_group.add_command(downstream_cmd)


_add_downstream()
