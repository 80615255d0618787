"""``cbdm eval downstream``: does adding generated images help a long-tail classifier?
(paper Table 4)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import click
from rich.console import Console
from rich.table import Table

from cbdm_core.errors import CbdmError

from .eval_support import Reporter


def _named(items: tuple[str, ...]) -> list[tuple[str, Path]]:
    """``NAME=PATH`` or ``PATH`` (named after the folder or file)."""
    out: list[tuple[str, Path]] = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).stem or Path(item).name, item
        if not name or not path:
            raise CbdmError(f"expected NAME=PATH or PATH, got {item!r}")
        out.append((name, Path(path)))
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CbdmError(f"two sample sets are named {dup[0]!r}; name them with NAME=PATH")
    return out


def _check_options(num: Optional[int], epochs: int, batch_size: int, blocks_per_stage: int, width: int,
                   lr: float, weight_decay: float, out: Path) -> None:
    """Every option, each in one line, before any classifier trains."""
    from cbdm_core.atomic import check_writable

    if num is not None and num < 0:
        raise CbdmError(f"--num must be >= 0, got {num}")
    for flag, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--blocks-per-stage",
                        blocks_per_stage), ("--width", width)):
        if value < 1:
            raise CbdmError(f"{flag} must be positive, got {value}")
    for flag, value in (("--lr", lr), ("--weight-decay", weight_decay)):  # NaN trained a NaN network
        if not math.isfinite(value) or value < 0 or (flag == "--lr" and value == 0):
            raise CbdmError(f"{flag} must be a finite number {'> 0' if flag == '--lr' else '>= 0'}, got {value}")
    check_writable(out, "result file")


@click.command("downstream")
@click.argument("samples", nargs=-1, metavar="[NAME=]SAMPLES...")
@click.option("--dataset", required=True, help="Long-tailed training set of the classifier (e.g. cifar10-lt).")
@click.option("--data-root", type=click.Path(path_type=Path), help="Folder holding the dataset files.")
@click.option("--num", "--num-samples", "-n", "num", type=int,
              help="Generated images added per model, spread evenly over classes "
              "[default: all].")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True, help="SGD learning rate (cosine decay).")
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--blocks-per-stage", type=int, default=5, show_default=True, help="5 = ResNet-32.")
@click.option("--width", type=int, default=16, show_default=True, help="First-stage channels.")
@click.option("--hflip/--no-hflip", default=None, help="Random horizontal flips [default: on for colour "
              "images, off for grayscale].")
@click.option("--resize", is_flag=True, help="Resize generated images to the dataset's shape.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("downstream.json"), show_default=True,
              help="Report (JSON).")
def downstream_cmd(samples: tuple[str, ...], dataset: str, data_root: Optional[Path], num: Optional[int],
                   epochs: int, batch_size: int, lr: float, weight_decay: float, blocks_per_stage: int,
                   width: int, hflip: Optional[bool], resize: bool, seed: int, device: str, out: Path) -> None:
    """Train a ResNet classifier on the long-tailed --dataset alone and with each SAMPLES set
    added, and score each on the class-balanced test split (accuracy, macro precision,
    macro recall). SAMPLES are labelled sample folders or .npz files; with none, only
    the real-data baseline is trained."""
    from cbdm_core.atomic import atomic_write_text
    from cbdm_core.device import resolve_device
    from cbdm_core.data import dataset_options, load_dataset
    from cbdm_core.experiments.downstream import DownstreamOptions, class_interleaved_subset, downstream_comparison
    from cbdm_core.evaluation import fit_to_reference, load_reference, read_samples

    reporter = Reporter()
    _check_options(num, epochs, batch_size, blocks_per_stage, width, lr, weight_decay, out)
    named = _named(samples)
    train = load_dataset(dataset, dataset_options(root=data_root, split="train"))
    test = load_reference(dataset, data_root, "test", balance=False)  # the whole test split, as before
    chw = (train.channels, int(train.images.shape[-2]), int(train.images.shape[-1]))
    generated = []
    for name, path in named:
        s = read_samples(path, train.class_names)
        if s.labels is None:
            raise CbdmError(f"{path}: the samples have no class labels; downstream training needs them")
        if int(s.labels.max()) >= train.num_classes or int(s.labels.min()) < 0:
            raise CbdmError(f"{path}: labels outside 0..{train.num_classes - 1} of {dataset}")
        images, _ = fit_to_reference(s.images, chw, dataset, resize)
        labels = s.labels
        if num is not None:
            keep = class_interleaved_subset(labels, num, seed)
            images, labels = images[keep], labels[keep]
        generated.append((name, images, labels))
    opts = DownstreamOptions(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                             blocks_per_stage=blocks_per_stage, width=width, seed=seed,
                             device=str(resolve_device(device)),
                             hflip=(train.channels == 3) if hflip is None else hflip)
    reporter.say(f"{len(generated) + 1} classifier(s) of {6 * blocks_per_stage + 2} layers on {len(train)} real "
                 f"{dataset} images (+ {', '.join(f'{len(x)} {n}' for n, x, _ in generated) or 'nothing'}), "
                 f"{epochs} epochs on {opts.device}; test: {len(test)} balanced images")
    results = downstream_comparison(train.images, train.labels, test.images, test.labels, train.num_classes,
                                    generated, opts)
    table = Table(title=f"downstream classification on {dataset} (balanced test set)", show_edge=False)
    for col in ("training set", "images", "accuracy", "macro precision", "macro recall"):
        table.add_column(col, justify="left" if col == "training set" else "right")
    for name, r in results.items():
        table.add_row(name, str(r["train_images"]), f"{r['accuracy']:.4f}", f"{r['macro_precision']:.4f}",
                      f"{r['macro_recall']:.4f}")
    Console().print(table)
    doc = {"format": "cbdm-downstream/1", "dataset": dataset, "test_images": len(test),
           "generated": {n: {"path": str(p), "images": len(x)} for (n, p), (_, x, _) in zip(named, generated)},
           "options": vars(opts), "results": results}
    atomic_write_text(out, json.dumps(doc, indent=2) + "\n")
    click.echo(f"wrote {out}")
