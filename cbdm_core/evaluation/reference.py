"""The real side of an evaluation: the class-balanced reference set (or the user's own
folder or FID statistics), its cached features, the training class frequencies, and
fitting the samples to its image shape."""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..data import dataset_options, load_dataset, long_tail_indices, open_dataset
from ..errors import CbdmError
from ..features import FeatureSet, cache_path, cached_features, reference_key
from ..interfaces import LabeledImages

ENV_CACHE = "CBDM_CACHE"
DEFAULT_CACHE = "~/.cache/cbdm"
LT_SUFFIX = "-lt"
BALANCE_SEED = 0  # which images a balanced subsample keeps: fixed, so reports and caches agree


def open_named(datasets: Optional[Callable[[str], Any]], name: str, options: Any) -> LabeledImages:
    """Dataset ``name`` through ``datasets`` (the edge's resolver, ``EvalComponents.datasets``);
    without one, through the registry (:func:`~cbdm_core.data.load_dataset`: users' own calls)."""
    if datasets is None:
        return load_dataset(name, options)
    return open_dataset(datasets(name), name, options)


def default_cache_dir() -> Path:
    """``$CBDM_CACHE``, else ``~/.cache/cbdm``."""
    return Path(os.environ.get(ENV_CACHE) or DEFAULT_CACHE).expanduser()


def resolve_reference_split(dataset: str, root: Optional[Path], split: str) -> str:
    """``auto``: held-out images when there are any (the ``test/`` folder of a ``folder``
    dataset), else ``train``; the built-in datasets keep the published ``train`` protocol."""
    if split != "auto":
        return split
    if dataset == "folder" and root is not None:
        test = Path(root).expanduser() / "test"
        if test.is_dir() and (Path(root).expanduser() / "train").is_dir():
            return "test"
    return "train"


def balance_classes(ds: LabeledImages, seed: int = BALANCE_SEED) -> LabeledImages:
    """``ds`` with the same number of images in every class: a seeded random subsample of each
    class down to the smallest class's count (``ds`` itself when the counts are already equal).
    ``info["balance"]`` says which."""
    counts = [int(c) for c in ds.class_counts.tolist()]
    n = min(counts)
    if len(set(counts)) == 1:
        return LabeledImages(ds.images, ds.labels, ds.class_names, ds.name,
                             {**ds.info, "balance": f"as loaded ({n} images per class)"})
    keep = long_tail_indices(ds.labels, [n] * len(counts), seed)
    how = (f"seeded subsample (seed {seed}) of {n} images per class, the smallest class's count; "
           f"the split holds {min(counts)}..{max(counts)} per class")
    return LabeledImages(ds.images[keep].contiguous(), ds.labels[keep].contiguous(), ds.class_names, ds.name,
                         {**ds.info, "balance": how, "source_counts": counts})


def load_reference(dataset: str, root: Optional[Path], split: str, *, folder: Optional[Path] = None,
                   classes: Optional[list[str]] = None, class_order: str = "name",
                   balance: bool = True, image_size: Optional[int] = None,
                   datasets: Optional[Callable[[str], Any]] = None) -> LabeledImages:
    """The class-balanced real set: ``split`` of ``dataset`` with ``imb_factor=1``, subsampled
    to equal class counts (:func:`balance_classes`); for a long-tailed name (``cifar10-lt``)
    that is the full, balanced base split.

    ``folder``: the user's own reference (``root/<class>/*.png``), used as given (not
    balanced: its counts are reported), with the classes in the training label order.
    ``balance=False``: the whole split (the downstream classifier's test set).
    ``image_size``: the training data's ``resize`` (the reference must be what the model learnt).
    ``datasets``: the edge's dataset resolver (see :func:`open_named`).
    """
    split = resolve_reference_split(dataset, root, split)
    if folder is not None:
        names = _label_order(dataset, root, classes, class_order, datasets)
        return open_named(datasets, "folder", dataset_options(root=folder, split="train", imb_factor=1.0,
                                                              classes=names, resize=image_size))
    extra = {} if dataset != "folder" else {"classes": classes, "class_order": class_order}
    ds = open_named(datasets, dataset, dataset_options(root=root, split=split, imb_factor=1.0, resize=image_size,
                                                       **extra))
    return balance_classes(ds) if balance else ds


def _label_order(dataset: str, root: Optional[Path], classes: Optional[list[str]],
                 class_order: str, datasets: Optional[Callable[[str], Any]]) -> list[str]:
    """Class names in the training label order (a folder's are listed, not decoded)."""
    if dataset == "folder":
        from ..data.folder import class_names

        return class_names(dataset_options(root=root, split="train", classes=classes, class_order=class_order))
    return list(open_named(datasets, dataset, dataset_options(root=root, split="train", imb_factor=1.0)).class_names)


def load_fid_stats(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(mu [D], sigma [D, D])`` from an FID statistics ``.npz`` (``mu``/``sigma``: the layout
    of pytorch-ddpm, the CBDM code and EDM, e.g. ``stats/cifar10.train.npz``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CbdmError(f"reference statistics file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.keys())
            if "mu" not in keys or "sigma" not in keys:
                raise CbdmError(f"reference statistics {path} hold {', '.join(keys) or 'nothing'}; expected "
                                "'mu' [D] and 'sigma' [D, D] (the pytorch-ddpm / EDM FID stats layout)")
            mu, sigma = np.asarray(f["mu"], dtype=np.float64), np.asarray(f["sigma"], dtype=np.float64)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # EOFError: an empty file
        raise CbdmError(f"cannot read reference statistics {path}: {exc or type(exc).__name__}") from None
    d = mu.reshape(-1).shape[0]
    if mu.ndim != 1 or sigma.shape != (d, d):
        raise CbdmError(f"reference statistics {path}: mu is {mu.shape} and sigma {sigma.shape}; "
                        "expected [D] and [D, D]")
    # A covariance is finite, symmetric and positive semi-definite; anything else gave an FID that
    # looked like a number (or an error blaming the sample features, after extracting them).
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise CbdmError(f"reference statistics {path}: mu or sigma holds NaN or inf")
    scale = max(float(np.abs(sigma).max()), 1e-12)
    if float(np.abs(sigma - sigma.T).max()) > 1e-6 * scale:
        raise CbdmError(f"reference statistics {path}: sigma is not symmetric, so not a covariance")
    if float(np.linalg.eigvalsh(sigma).min()) < -1e-6 * scale * d:
        raise CbdmError(f"reference statistics {path}: sigma has negative eigenvalues, so not a covariance")
    return mu, sigma


def data_digest(ds: LabeledImages) -> str:
    """Short content hash of a labelled image set: the cache never mixes up data roots."""
    h = hashlib.sha256()
    h.update(str(tuple(ds.images.shape)).encode())
    h.update(ds.images.contiguous().numpy().tobytes())
    h.update(ds.labels.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def reference_cache_key(dataset: str, split: str, ds: LabeledImages, extractor_key: str) -> str:
    """``reference_key`` of the balanced set (``-lt`` dropped, so ``x`` and ``x-lt`` share it)
    plus a content hash of the images."""
    base = dataset[: -len(LT_SUFFIX)] if dataset.endswith(LT_SUFFIX) else dataset
    return reference_key(f"{base}@{data_digest(ds)}", split, extractor_key)


@dataclass
class CachedReference:
    features: FeatureSet
    cache_key: str
    cache_file: Path
    cache_hit: bool


def reference_features(extractor: Any, ds: LabeledImages, *, dataset: str, split: str, cache_dir: Path,
                       batch_size: int, device: torch.device, ctx: Optional[Any] = None) -> CachedReference:
    """Features of the reference images (with labels), computed once per data, split and extractor.

    Under torchrun (``ctx``, a :class:`~cbdm_core.training.distributed.DistContext`) a missing
    cache is computed by all ranks, each an index range, and written by rank 0 alone."""
    from .split_extract import extract_features

    key = reference_cache_key(dataset, split, ds, extractor.cache_key)
    computed = []

    def compute() -> FeatureSet:
        computed.append(True)
        return extract_features(extractor, ds.images, batch_size=batch_size, device=device,
                                ctx=ctx).with_labels(ds.labels)

    folder = Path(cache_dir) / "features"
    if ctx is not None and ctx.enabled and ctx.any(not cache_path(folder, key).is_file()):
        full = compute()  # every rank takes part; the cache file gets one writer
        written = ctx.main_first(lambda: cached_features(folder, key, lambda: full), others=False)
        fs = written if written is not None else full
    else:
        fs = cached_features(folder, key, compute)
    if fs.labels is None or len(fs) != len(ds):
        raise CbdmError(f"reference feature cache {cache_path(folder, key)} does not match the data; delete it")
    return CachedReference(fs, key, cache_path(folder, key), not computed)


def _counts_of(counts: Any, num_classes: int) -> Optional[list[int]]:
    if isinstance(counts, list) and len(counts) == num_classes and all(isinstance(c, int) for c in counts):
        return [int(c) for c in counts]
    return None


def manifest_class_counts(manifest: Optional[dict[str, Any]], num_classes: int) -> Optional[tuple[list[int], str]]:
    """Training class counts of the model that made the samples, from the manifest's model
    metadata (``manifest["model"]``) or the checkpoint the manifest names; ``None`` if unknown."""
    if not manifest:
        return None
    model = manifest.get("model")  # a manifest's copy of the run metadata, a plain dict
    counts = _counts_of(model.get("class_counts") if isinstance(model, dict) else None, num_classes)
    if counts is not None:
        return counts, "sample manifest (model metadata)"
    ckpt = (manifest.get("settings") or {}).get("checkpoint")
    if not ckpt or not Path(ckpt).is_file():
        return None
    from ..checkpoint import read_run_meta

    counts = _counts_of(read_run_meta(Path(ckpt)).class_counts, num_classes)
    return (counts, f"checkpoint {ckpt} (model metadata)") if counts is not None else None


def training_class_counts(dataset: str, root: Optional[Path], num_classes: int,
                          manifest: Optional[dict[str, Any]] = None,
                          fallback: Optional[torch.Tensor] = None, *, classes: Optional[list[str]] = None,
                          class_order: str = "name",
                          datasets: Optional[Callable[[str], Any]] = None) -> tuple[list[int], str]:
    """Class training frequencies: the model's metadata when the manifest leads to it, else
    the (long-tailed, for ``*-lt`` names) training split of ``dataset`` with default options."""
    found = manifest_class_counts(manifest, num_classes)
    if found is not None:
        return found
    try:
        extra = {} if dataset != "folder" else {"classes": classes, "class_order": class_order}
        train = open_named(datasets, dataset, dataset_options(root=root, split="train", **extra))
    except CbdmError as exc:
        if fallback is None:
            raise
        warnings.warn(f"cannot load the {dataset} training split for class frequencies ({exc}); "
                      "using the reference set's class counts", UserWarning, stacklevel=2)
        return [int(c) for c in fallback.tolist()], "reference set (training split unavailable)"
    if train.num_classes != num_classes:
        raise CbdmError(f"the {dataset} training split has {train.num_classes} classes, the reference "
                        f"set {num_classes}")
    return [int(c) for c in train.class_counts.tolist()], f"{dataset} training split (default options)"


def _to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if images.shape[1] == channels:
        return images
    if images.shape[1] == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if images.shape[1] == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(dim=1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise CbdmError(f"cannot convert {images.shape[1]}-channel samples to {channels} channels")


def fit_to_reference(images: torch.Tensor, ref_chw: tuple[int, int, int], dataset: str, resize: bool,
                     chunk: int = 1000) -> tuple[torch.Tensor, Optional[str]]:
    """The samples at the reference's channels and size, and a note when converted.

    Without ``resize`` any mismatch is a :class:`CbdmError`; with it, grayscale is repeated
    to RGB (RGB to luminance) and the size changed with antialiased bilinear resampling.
    """
    c, h, w = (int(s) for s in images.shape[1:])
    rc, rh, rw = ref_chw
    if (c, h, w) == (rc, rh, rw):
        return images, None
    if not resize:
        what = []
        if (h, w) != (rh, rw):
            what.append(f"{w}x{h} instead of {rw}x{rh}")
        if c != rc:
            what.append(f"{c} channel(s) instead of {rc}")
        raise CbdmError(f"the samples are {' with '.join(what)} like the {dataset} reference images; "
                        "generate them at the dataset's size or pass --resize")
    out = []
    for i in range(0, images.shape[0], chunk):
        x = _to_channels(images[i:i + chunk], rc)
        if (h, w) != (rh, rw):
            x = F.interpolate(x.float(), size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
            x = x.round().clamp(0, 255).to(torch.uint8)
        out.append(x)
    return torch.cat(out), f"resized from {c}x{h}x{w} to {rc}x{rh}x{rw} (CxHxW)"


def check_labels(labels: Optional[torch.Tensor], num_classes: int, source: str) -> None:
    if labels is None or len(labels) == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise CbdmError(f"sample labels in {source} range {lo}..{hi} but the reference has {num_classes} "
                        f"classes (0..{num_classes - 1})")

