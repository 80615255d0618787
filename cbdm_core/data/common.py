"""Steps every loader shares: root checks, per-class caps, long tail, final validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import CbdmError
from ..interfaces import LabeledImages
from .long_tail import long_tail_counts, long_tail_indices
from .options import DatasetOptions


def require_root(options: DatasetOptions, dataset: str, what: str) -> Path:
    """``options.root`` as a path, or a one-line error saying what the folder must hold."""
    if options.root is None:
        raise CbdmError(f"dataset {dataset} needs --data-root: a folder holding {what}")
    root = Path(options.root).expanduser()
    if not root.is_dir():
        if options.download:
            root.mkdir(parents=True, exist_ok=True)
        else:
            raise CbdmError(f"dataset {dataset}: data root {root} is not a folder (expected {what})")
    return root


def effective_imb_factor(options: DatasetOptions, lt_default: float) -> float:
    """The imbalance to apply: the option if given, else the dataset's default for the train split.

    Test splits of ``*-lt`` datasets stay balanced by default, as in the LT benchmarks.
    """
    if options.imb_factor is not None:
        return float(options.imb_factor)
    return lt_default if options.split == "train" else 1.0


def select_indices(
    labels: torch.Tensor, num_classes: int, options: DatasetOptions, lt_default: float
) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """Indices kept by ``max_per_class`` and the long tail (``None`` = keep everything).

    ``n_max`` of the long tail is the largest class count after the cap.
    """
    labels = torch.as_tensor(labels).long().cpu()
    source_counts = torch.bincount(labels, minlength=num_classes)
    imb = effective_imb_factor(options, lt_default)
    info: dict[str, Any] = {"imb_factor": imb, "source_counts": source_counts.tolist()}
    keep: torch.Tensor | None = None
    counts = source_counts
    if options.max_per_class is not None:
        keep = long_tail_indices(labels, [options.max_per_class] * num_classes, options.lt_seed)
        counts = torch.clamp(source_counts, max=options.max_per_class)
        info["max_per_class"] = options.max_per_class
    if imb < 1.0:
        want = long_tail_counts(int(counts.max()), num_classes, imb, options.lt_profile)
        sub = labels if keep is None else labels[keep]
        inner = long_tail_indices(sub, want, options.lt_seed)
        keep = inner if keep is None else keep[inner]
        info.update(lt_profile=options.lt_profile, lt_seed=options.lt_seed, lt_counts=want)
    return keep, info


def check_labeled(ds: LabeledImages) -> LabeledImages:
    """Fail with one clear line unless ``ds`` is well formed: uint8 NCHW, int64 labels in range,
    at least one image per class."""
    name = ds.name or "dataset"
    if ds.images.dtype != torch.uint8 or ds.images.dim() != 4:
        raise CbdmError(f"{name}: images must be uint8 [N, C, H, W], got {ds.images.dtype} {tuple(ds.images.shape)}")
    if ds.labels.dtype != torch.int64 or ds.labels.dim() != 1 or len(ds.labels) != len(ds.images):
        raise CbdmError(f"{name}: labels must be int64 [N] with N = {len(ds.images)} images")
    k = ds.num_classes
    if k < 1:
        raise CbdmError(f"{name}: no classes")
    if len(ds.labels) and (int(ds.labels.min()) < 0 or int(ds.labels.max()) >= k):
        raise CbdmError(
            f"{name}: labels must be in 0..{k - 1}, found {int(ds.labels.min())}..{int(ds.labels.max())}"
        )
    empty = [ds.class_names[c] for c, n in enumerate(ds.class_counts.tolist()) if n == 0]
    if empty:
        raise CbdmError(f"{name}: class {empty[0]!r} has no images ({len(empty)} empty class(es))")
    return ds


def finish(
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    name: str,
    options: DatasetOptions,
    lt_default: float,
    info: dict[str, Any] | None = None,
) -> LabeledImages:
    """Apply the cap and long tail, then validate and wrap as :class:`LabeledImages`."""
    if options.classes is not None or options.class_order != "name":
        # Silently ignoring them would train on other classes than the config says.
        raise CbdmError(f"dataset {name}: classes and class_order apply to the folder dataset only")
    labels = torch.as_tensor(labels).long()
    keep, sel_info = select_indices(labels, len(class_names), options, lt_default)
    if keep is not None:
        images, labels = images[keep], labels[keep]
    images = apply_resize(images, options, sel_info)
    full_info = {"split": options.split, **(info or {}), **sel_info}
    ds = LabeledImages(images.contiguous(), labels.contiguous(), list(class_names), name, full_info)
    return check_labeled(ds)


def apply_resize(images: torch.Tensor, options: DatasetOptions, info: dict[str, Any]) -> torch.Tensor:
    """``images`` at ``options.resize`` (noted in ``info``), or as they are without the option."""
    if options.resize is None or tuple(images.shape[-2:]) == (options.resize, options.resize):
        return images
    info.update(resize=options.resize, resized_from=list(images.shape[-2:]))
    return resize_images(images, options.resize)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` resized to ``size x size``: area averaging when shrinking (an exact
    k x k mean for an integer factor, so no aliasing), bilinear when growing; rounded to uint8."""
    x = images.float()
    shrink = size <= min(images.shape[-2:])
    out = torch.cat([torch.nn.functional.interpolate(x[i:i + 4096], size=(size, size),
                                                     mode="area" if shrink else "bilinear",
                                                     **({} if shrink else {"align_corners": False}))
                     for i in range(0, len(x), 4096)]) if len(x) else x.new_zeros((0, x.shape[1], size, size))
    return out.round().clamp(0, 255).to(torch.uint8)


def split_holdout(ds: LabeledImages, fraction: float, seed: int = 0) -> tuple[LabeledImages, LabeledImages]:
    """``(train, held_out)``: a seeded ``fraction`` of every class (at least one image of a class
    with two or more; a single image stays in train) set aside for testing."""
    if not 0.0 < fraction < 1.0:
        raise CbdmError(f"the held-out fraction must be in (0, 1), got {fraction}")
    gen = torch.Generator().manual_seed(int(seed))
    held: list[torch.Tensor] = []
    for c in range(ds.num_classes):
        idx = torch.nonzero(ds.labels == c).flatten()
        n = len(idx)
        k = 0 if n < 2 else min(n - 1, max(1, round(n * fraction)))
        held.append(idx[torch.randperm(n, generator=gen)[:k]])
    test_idx = torch.sort(torch.cat(held)).values
    mask = torch.ones(len(ds.labels), dtype=torch.bool)
    mask[test_idx] = False

    def part(sel: torch.Tensor, what: str) -> LabeledImages:
        return LabeledImages(ds.images[sel].contiguous(), ds.labels[sel].contiguous(), list(ds.class_names),
                             ds.name, {**ds.info, "held_out": what})

    return part(mask, f"train part ({1 - fraction:g})"), part(test_idx, f"held-out part ({fraction:g}, seed {seed})")
