"""The held-out-real row of a comparison's memorisation report: the memorisation metric applied
to real images that are NOT in the diffusion training set. None of them is a copy, so every
flag is a false positive; its rate per head/medium/tail group is the floor a method's
memorisation rate is to be read against (the ratio test is less sensitive where training images
crowd, i.e. in head classes, and more trigger-happy where they are few).

The images: every real image of the dataset (all splits) whose content is in no diffusion
training set of the study, up to :data:`PER_CLASS` per class (seeded), the same pool the auto
classifier draws from. Written once to ``heldout-real.json`` in the study folder, with every
image's class and distances (the d1/d2 histogram and ``cbdm compare merge`` need them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

from ..atomic import atomic_write_text
from ..errors import CbdmError

if TYPE_CHECKING:
    from .compare_plan import StudyPlan

HELDOUT_JSON = "heldout-real.json"
PER_CLASS = 100  # enough for a rate per group; the nearest-neighbour search stays cheap
FORMAT = "cbdm-heldout-real/1"


def _threshold(plan: "StudyPlan") -> float:
    from ..metrics.memorization import THRESHOLD

    options = plan.protocol.evaluation.metric_options.get("memorization") or {}
    return float(options.get("threshold", THRESHOLD))


class NoHeldOutImages(CbdmError):
    """The dataset has no real image outside the diffusion training set."""


def heldout_images(dataset: str, root: Optional[Path], training_images: torch.Tensor, *,
                   per_class: int = PER_CLASS, seed: int = 0,
                   resize: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)``: real images of ``dataset`` whose content is not among
    ``training_images``, at most ``per_class`` per class (seeded choice)."""
    from ..data import dataset_options
    from ..features.auto_classifier import _digests, _real_pool

    seen = set(_digests(training_images))
    xs, ys = [], []
    for _split, ds in _real_pool(dataset, root, dataset_options(root=root, split="train", resize=resize)):
        keep = [i for i, d in enumerate(_digests(ds.images)) if d not in seen]
        xs.append(ds.images[keep])
        ys.append(ds.labels[keep])
    if not xs or sum(len(y) for y in ys) == 0:  # e.g. a folder dataset without test/: every image trained on
        raise NoHeldOutImages(f"{dataset} has no real image outside the diffusion training set, so the "
                              "memorisation rate of held-out real images (the metric's false positives) is not "
                              "measured")
    x, y = torch.cat(xs), torch.cat(ys)
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in sorted(set(y.tolist())):
        idx = torch.nonzero(y == c).flatten()
        chosen.append(idx[torch.randperm(len(idx), generator=gen)][:per_class])
    order = torch.sort(torch.cat(chosen)).values
    return x[order], y[order]


def heldout_document(dataset: str, root: Optional[Path], resize: Optional[int], threshold: float,
                     reference: Any, manifest: Optional[dict[str, Any]], status: Callable[[str], None],
                     training_set: str) -> dict[str, Any]:
    """The held-out-real document: the memorisation metric on real images of ``dataset`` outside
    the training set of the model that ``manifest`` names (``reference``: a prepared reference)."""
    from ..metrics.memorization import nearest_training

    training = reference.training(manifest, status)
    images, labels = heldout_images(dataset, root, training.images, resize=resize)
    status(f"memorisation of {len(labels)} held-out real images (not in the diffusion training set)")
    # exactly as the memorization metric measures samples (plugins/metrics.py)
    spaces = {"pixels": nearest_training(images.flatten(1).float(), training.images.flatten(1).float(),
                                         threshold=threshold)}
    feats = reference.extractor.extract(images, batch_size=reference.batch_size, device=reference.device)
    spaces["features"] = nearest_training(feats.features, training.features, threshold=threshold)
    return {
        "format": FORMAT, "threshold": threshold, "count": len(labels), "per_class_cap": PER_CLASS,
        "training_set": training_set,
        "labels": labels.tolist(),
        "train_labels": training.labels.tolist(),
        "rule": "real images of every split whose content is in no diffusion training set, "
                f"at most {PER_CLASS} per class",
        "spaces": {s: {"d1": n.d1.tolist(), "d2": n.d2.tolist(), "memorized": n.memorized.astype(int).tolist()}
                   for s, n in spaces.items()},
    }


def compute_heldout_real(plan: "StudyPlan", reference: Any, sample_folder: Path,
                         status: Callable[[str], None]) -> dict[str, Any]:
    """The held-out-real document (see the module docstring), against the training set of the
    samples in ``sample_folder`` (every run of a study trains on the same set)."""
    manifest = json.loads((sample_folder / "manifest.json").read_text())
    d = plan.protocol.data
    # no path: every run of a study (and of its shards) trains on this same set
    described = f"images of {d.dataset}" + (f" at imbalance {d.imb_factor:g}" if d.imb_factor is not None else "")
    doc = heldout_document(d.dataset, d.root, d.resize, _threshold(plan), reference, manifest, status, described)
    doc["training_set"] = f"{len(doc['train_labels'])} {described}"
    return doc


def ensure_heldout_real(plan: "StudyPlan", reference: Any, sample_folder: Path,
                        status: Callable[[str], None]) -> dict[str, Any]:
    """``heldout-real.json`` of the study folder, computed once."""
    path = plan.out_dir / HELDOUT_JSON
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:  # damaged: computed again
            pass
    doc = compute_heldout_real(plan, reference, sample_folder, status)
    atomic_write_text(path, json.dumps(doc) + "\n")
    return doc
