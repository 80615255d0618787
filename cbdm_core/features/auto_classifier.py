"""The dataset's feature classifier trained on demand (``classifier: auto`` in ``cbdm compare``,
and training-time evaluation without a classifier file): once into a file, then reused.

It must not favour the diffusion model's training images: a classifier that has seen them
recognises copies of them better than new images, which biases conditional accuracy (and the
feature space) towards memorising models, most of all on the tail. So it trains on the real
images of the dataset (all splits) that are NOT in any diffusion training set of the run or
study (matched by content, so a duplicate of a training image is excluded too), with
class-balanced batches, and keeps an equal number of images per class held out to measure its
own per-class accuracy: the ceiling of conditional accuracy.

digits (1,797 images) with digits-lt at imbalance 0.03 (143, 99, ..., 4 training images):
35, 83, 110, 138, 151, 162, 167, 170, 168, 176 images per class remain; 11 per class (30% of
the smallest class) are held out, the rest (24 ... 165) train with class-balanced batches.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from ..errors import CbdmError

log = logging.getLogger("cbdm.features")

HELD_OUT_FRACTION = 0.3  # of the smallest class, the same count held out for every class


@dataclass
class ClassifierData:
    """Training and held-out real images of the auto classifier, and where they came from."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    held_images: torch.Tensor
    held_labels: torch.Tensor
    num_classes: int
    class_names: list[str]
    excluded: int  # real images left out because a diffusion training set holds them
    sources: list[tuple[str, int]] = field(default_factory=list)  # (split, index within it) of train rows

    def describe(self) -> dict[str, Any]:
        return {"train_per_class": torch.bincount(self.train_labels, minlength=self.num_classes).tolist(),
                "held_out_per_class": torch.bincount(self.held_labels, minlength=self.num_classes).tolist(),
                "excluded_diffusion_training_images": self.excluded,
                "rule": "real images of every split not in any diffusion training set (by content); "
                        f"{HELD_OUT_FRACTION:g} of the smallest class held out per class; class-balanced batches"}


def _digests(images: torch.Tensor) -> list[bytes]:
    flat = images.reshape(images.shape[0], -1).contiguous().numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


def _real_pool(dataset: str, root: Optional[Path], like: Any) -> list[tuple[str, Any]]:
    """Every real split of ``dataset`` without a long tail or cap (other options, such as a
    folder's classes, as in ``like``): ``[(split, LabeledImages)]``; a missing test split is skipped."""
    from ..data import dataset_options, load_dataset

    base = {} if like is None else like.model_dump(exclude={"split", "imb_factor", "max_per_class", "root"})
    pool = []
    for split in ("train", "test"):
        try:
            opts = dataset_options(**{**base, "root": root, "split": split, "imb_factor": 1.0})
            pool.append((split, load_dataset(dataset, opts)))
        except CbdmError:
            if split == "train":
                raise
    return pool


def classifier_data(dataset: str, root: Optional[Path], training_sets: Sequence[Any], *,
                    held_out_fraction: float = HELD_OUT_FRACTION, seed: int = 0) -> ClassifierData:
    """The auto classifier's images: every real image of ``dataset`` whose content is in none of
    ``training_sets`` (``DatasetOptions`` of the diffusion training sets), split per class into
    an equal held-out count (``held_out_fraction`` of the smallest class, at least 1) and the
    rest for training. Seeded, so the same inputs give the same split."""
    from ..data import load_dataset

    seen: set[bytes] = set()
    for opts in training_sets:
        seen.update(_digests(load_dataset(dataset, opts).images))
    images, labels, sources, excluded = [], [], [], 0
    names: list[str] = []
    for split, ds in _real_pool(dataset, root, training_sets[0] if training_sets else None):
        names = list(ds.class_names)
        keep = [i for i, d in enumerate(_digests(ds.images)) if d not in seen]
        excluded += len(ds.labels) - len(keep)
        images.append(ds.images[keep])
        labels.append(ds.labels[keep])
        sources += [(split, i) for i in keep]
    x, y = torch.cat(images), torch.cat(labels)
    k = len(names)
    counts = torch.bincount(y, minlength=k)
    if int(counts.min()) < 2:
        raise CbdmError(f"{dataset}: class {names[int(counts.argmin())]!r} has {int(counts.min())} real image(s) "
                        "outside the diffusion training set; the auto classifier needs at least 2 per class "
                        "(train one with `cbdm eval train-classifier` and pass the file)")
    n_held = min(int(counts.min()) - 1, max(1, math.ceil(held_out_fraction * int(counts.min()))))
    gen = torch.Generator().manual_seed(seed)
    held, train = [], []
    for c in range(k):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        held.append(idx[:n_held])
        train.append(idx[n_held:])
    tr, he = torch.sort(torch.cat(train)).values, torch.sort(torch.cat(held)).values
    return ClassifierData(x[tr], y[tr], x[he], y[he], k, names, excluded, [sources[i] for i in tr.tolist()])


@torch.no_grad()
def per_class_accuracy(model: Any, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[Optional[float]]:
    """Top-1 accuracy of ``model`` on the images of each class (``None`` for a class without any)."""
    dev = next(model.parameters()).device
    pred = torch.cat([model(images[i:i + 512].to(dev)).argmax(dim=1).cpu() for i in range(0, len(images), 512)])
    out: list[Optional[float]] = []
    for c in range(num_classes):
        mask = labels == c
        out.append(float((pred[mask] == c).double().mean()) if mask.any() else None)
    return out


def ensure_classifier(path: Path, dataset: str, root: Optional[Path], *, epochs: int,
                      device: torch.device | str = "cpu",
                      on_status: Optional[Callable[[str], None]] = None,
                      training_sets: Optional[Sequence[Any]] = None) -> Path:
    """``path``, training the feature classifier of ``dataset`` into it first when it does not
    exist, on :func:`classifier_data` (default options, class-balanced batches, seed 0; small
    datasets: for large ones train one with ``cbdm eval train-classifier`` and pass the file).

    ``training_sets``: the ``DatasetOptions`` of every diffusion training set whose images the
    classifier must not see (default: the dataset's default training split). Its held-out
    per-class accuracy is stored in the file's metadata (``held_out``).

    The global RNG state is left as it was, so a training run that calls this mid-way keeps
    its random streams.
    """
    path = Path(path)
    with _classifier_lock(path):
        if _usable(path):
            return path
        return _train_into(path, dataset, root, epochs=epochs, device=device, on_status=on_status,
                           training_sets=training_sets)


@contextlib.contextmanager
def _classifier_lock(path: Path) -> Iterator[None]:
    """Hold the lock of ``path``'s folder while the classifier is checked or trained, like the
    feature cache: a second process on a cold cache waits for the first one's classifier instead
    of training its own, and the temporary file of a writer that was killed mid-write is removed
    (nothing else would). Only that file's temporaries: the folder may be a run or study folder.
    An unlockable (read-only) folder or one still busy after the wait: go on without the lock."""
    from .. import locks
    from .cache import cache_wait_seconds

    folder = path.parent

    def waiting(pid: str) -> None:
        log.warning("waiting for the classifier %s (PID %s) ...", path, pid)

    try:
        locked = locks.acquire_waiting(folder, "classifier folder", cache_wait_seconds(), on_wait=waiting)
    except CbdmError:
        locked = False
    try:
        if locked:
            for temp in folder.glob(f".{glob.escape(path.name)}.*.tmp"):
                temp.unlink(missing_ok=True)
        yield
    finally:
        if locked:
            locks.release(folder)


def _train_into(path: Path, dataset: str, root: Optional[Path], *, epochs: int, device: torch.device | str,
                on_status: Optional[Callable[[str], None]], training_sets: Optional[Sequence[Any]]) -> Path:
    """Train the classifier of :func:`ensure_classifier` and write it to ``path``."""
    from ..data import dataset_options
    from . import save_classifier, train_classifier

    sets = list(training_sets) if training_sets is not None else [dataset_options(root=root, split="train")]
    data = classifier_data(dataset, root, sets)
    if on_status is not None:
        on_status(f"training the {dataset} feature classifier ({epochs} epochs, {len(data.train_labels)} real "
                  f"images outside the diffusion training set, {len(data.held_labels)} held out) into {path}")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = train_classifier(data.train_images, data.train_labels, data.num_classes, epochs=epochs,
                                 balanced=True, seed=0, device=device)
    accuracy = per_class_accuracy(model, data.held_images, data.held_labels, data.num_classes)
    known = [a for a in accuracy if a is not None]
    save_classifier(model, path, {
        "dataset": dataset, "class_names": data.class_names,
        "class_counts": torch.bincount(data.train_labels, minlength=data.num_classes).tolist(),
        "data": data.describe(),
        "held_out": {"per_class_accuracy": accuracy, "class_mean_accuracy": sum(known) / len(known) if known else None,
                     "per_class_count": torch.bincount(data.held_labels, minlength=data.num_classes).tolist()},
    })
    return path


def classifier_summary(path: Path) -> dict[str, Any]:
    """What a report says about a classifier file: its file, training data and held-out accuracy
    (empty ``held_out`` for a file without one, e.g. one trained by ``cbdm eval train-classifier``)."""
    from .classifier_net import load_classifier

    meta = load_classifier(path).meta
    return {"file": str(path), "data": meta.get("data"), "held_out": meta.get("held_out")}


def _usable(path: Path) -> bool:
    """Whether ``path`` holds an intact classifier (hash-checked); a corrupt or unreadable
    one is a cache miss: it is trained again, with a warning."""
    if not path.is_file():
        return False
    from .cache import cache_warning
    from .classifier_net import load_classifier

    try:
        load_classifier(path)
    except CbdmError as exc:
        cache_warning(f"ignoring bad classifier file ({exc}); training it again")
        return False
    return True


# Datasets whose images Inception was not made for (8x8 and 28x28 grey digits): `cbdm eval` and
# `cbdm sweep` measure them with the dataset's own classifier unless told otherwise. The
# classifier is small and trains in seconds (digits) to a minute or two (MNIST) on a CPU, and
# needs no download, so the quickstart works offline.
CLASSIFIER_DEFAULT: dict[str, int] = {"digits": 30, "digits-lt": 30, "mnist": 5, "mnist-lt": 5,
                                       "mnist-lt-small": 5}  # name -> epochs


def default_extractor(dataset: str) -> str:
    """The extractor used when none is chosen: ``classifier`` for the digit datasets, else
    ``inception`` (the published FID protocol)."""
    return "classifier" if dataset in CLASSIFIER_DEFAULT else "inception"


def shared_classifier(dataset: str, root: Optional[Path], cache_dir: Path, *, device: torch.device | str = "cpu",
                      on_status: Optional[Callable[[str], None]] = None) -> Path:
    """The dataset's default feature classifier, trained once into
    ``<cache_dir>/classifiers/classifier-<dataset>.safetensors`` and shared by every run, so
    the numbers of two runs are measured with the same network."""
    path = Path(cache_dir).expanduser() / "classifiers" / f"classifier-{dataset}.safetensors"
    from ..atomic import ensure_dir

    ensure_dir(path.parent, "classifier folder")
    return ensure_classifier(path, dataset, root, epochs=CLASSIFIER_DEFAULT.get(dataset, 30), device=device,
                             on_status=on_status)
