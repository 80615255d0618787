"""The reference side of an evaluation, loaded once and re-used: the balanced real set, the
feature extractor, the cached reference features, the reference k-NN radii, and (for
memorisation) the training set a model was trained on. A sweep prepares it once and passes it
to :func:`~cbdm_core.evaluation.evaluate` for every point; so can ``cbdm compare``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .. import locks
from ..atomic import remove_stale_temps
from ..data import dataset_options
from ..errors import CbdmError
from ..features import FeatureSet, cache_path, cached_features, reference_key
from ..features.cache import cache_warning
from ..tensor_io import load_tensors, save_tensors
from ..interfaces import LabeledImages
from ..metrics import TrainingReference
from .extractor import build_extractor, check_classifier_fits
from .reference import (CachedReference, data_digest, default_cache_dir, load_fid_stats, load_reference,
                        open_named, reference_features, resolve_reference_split)
from .resolved import DatasetResolver, EvalComponents

StatusFn = Callable[[str], None]
RADII_FORMAT = "cbdm-radii-v1"


class ReferenceRadii:
    """k-NN radii of (subsamples of) the reference features, in memory and on disk next to the
    features, keyed by the reference's cache key (data, split, extractor) and by k, the
    subsample size and seed (see :class:`cbdm_core.metrics.RadiiCache`)."""

    def __init__(self, folder: Path, reference_key_: str) -> None:
        self.folder, self.reference_key = Path(folder), reference_key_
        self.memory: dict[str, torch.Tensor] = {}
        self.computed = 0  # how many radii sets were computed (not loaded): for tests and benchmarks

    def get(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key in self.memory:
            return self.memory[key]
        full_key = f"{self.reference_key}-radii-{key}"
        path = cache_path(self.folder, full_key)
        radii = self._load(path, full_key)
        if radii is None:
            radii = compute()
            self.computed += 1
            self._save(path, full_key, radii)
        self.memory[key] = radii
        return radii

    def _save(self, path: Path, key: str, radii: torch.Tensor) -> None:
        """Write the radii under the cache folder's lock; any failure (read-only or full cache
        folder, another writer) is a warning: the radii are already computed and used."""
        try:
            with locks.folder_lock(self.folder, "feature cache folder"):
                # A writer killed mid-write leaves its temporary file; with the features already
                # cached, nothing else would ever remove it (the lock says no write is under way).
                remove_stale_temps(self.folder)
                save_tensors(path, {"radii": radii}, {"format": RADII_FORMAT, "key": key})
        except CbdmError as exc:
            cache_warning(f"k-NN radii cache not written ({exc})")

    @staticmethod
    def _load(path: Path, key: str) -> Optional[torch.Tensor]:
        """The cached radii, or ``None``: missing, or unreadable / corrupt (hash-checked like
        every file cbdm writes; a bad one is recomputed with a warning)."""
        if not path.is_file():
            return None
        try:
            tensors, meta = load_tensors(path)
        except CbdmError as exc:
            cache_warning(f"ignoring bad k-NN radii cache file ({exc}); recomputing")
            return None
        radii = tensors.get("radii")
        if meta.get("format") != RADII_FORMAT or meta.get("key") != key or radii is None:
            return None
        return radii


@dataclass
class FidStats:
    """Precomputed FID statistics (``mu``/``sigma`` of a reference's features) from a file."""

    file: Path
    mu: Any
    sigma: Any

    def fid(self, fake: FeatureSet) -> dict[str, Optional[float]]:
        """``{"fid"}`` of the sample features against these statistics."""
        from ..metrics._common import InsufficientSamplesError, warn
        from ..metrics.fid import feature_statistics, frechet_distance

        d = int(fake.features.shape[1])
        if self.mu.shape[0] != d:
            raise CbdmError(f"reference statistics {self.file} are {self.mu.shape[0]}-dimensional but the "
                            f"{fake.extractor} features {d}-dimensional; use the extractor they were made with "
                            "(Inception pool3: 2048)")
        try:
            mu, sigma = feature_statistics(fake.features)
        except InsufficientSamplesError as exc:
            warn(f"metric 'fid' NOT COMPUTED: {exc}")
            return {"fid": None}
        return {"fid": frechet_distance(self.mu, self.sigma, mu, sigma)}


@dataclass
class PreparedReference:
    """Everything about the reference an evaluation needs, independent of the samples.

    Build it with :func:`prepare_reference`; pass it as ``evaluate(..., reference=...)``.
    """

    dataset: str
    data_root: Optional[Path]
    split: str
    images: LabeledImages
    extractor: Any
    info: Any  # ExtractorInfo
    cached: CachedReference
    device: torch.device
    cache_dir: Path
    batch_size: int
    radii: ReferenceRadii
    folder: Optional[Path] = None
    stats: Optional[FidStats] = None
    classes: Optional[list[str]] = None
    class_order: str = "name"
    datasets: Optional[DatasetResolver] = None  # the edge's resolver, for training sets named by manifests
    _training: dict[str, TrainingReference] = field(default_factory=dict)
    _counts: dict[str, tuple[list[int], str]] = field(default_factory=dict)

    @property
    def chw(self) -> tuple[int, int, int]:
        ref = self.images
        return ref.channels, int(ref.images.shape[-2]), int(ref.images.shape[-1])

    @property
    def features(self) -> FeatureSet:
        return self.cached.features

    def matches(self, options: Any) -> bool:
        """Whether ``options`` (EvalOptions) describe this reference."""
        split = resolve_reference_split(options.dataset, options.data_root, options.reference_split)
        stats = None if options.reference_stats is None else Path(options.reference_stats).expanduser()
        folder = None if options.reference_folder is None else Path(options.reference_folder)
        return (options.dataset == self.dataset and split == self.split and options.extractor == self.info.name
                and folder == self.folder and stats == (self.stats and self.stats.file))

    def describe(self) -> dict[str, Any]:
        """The report's ``reference`` section: what was compared against, with its real class counts."""
        ref = self.images
        counts = [int(c) for c in ref.class_counts.tolist()]
        balanced = len(set(counts)) == 1
        if self.folder is not None:
            what = f"reference folder {self.folder}"
        else:
            what = f"{self.split} split of {self.dataset}"
        shape = "class-balanced" if balanced else f"NOT class-balanced (counts {min(counts)}..{max(counts)})"
        how = ref.info.get("balance") or "as given"
        doc: dict[str, Any] = {
            "dataset": self.dataset, "split": self.split, "folder": None if self.folder is None else str(self.folder),
            "imb_factor": 1.0, "count": len(ref), "num_classes": ref.num_classes, "image_shape": list(self.chw),
            "balanced": balanced, "balance": how, "class_counts": counts,
            "description": f"{shape} {what}: {len(ref)} images, {ref.num_classes} classes ({how})",
        }
        if self.stats is not None:
            doc["fid_statistics"] = {
                "file": str(self.stats.file), "dim": int(self.stats.mu.shape[0]),
                "note": (f"FID is computed against the statistics in {self.stats.file}; comparable with published "
                         "numbers made against the same file only with the official Inception weights"
                         + ("" if self.info.comparable else ", which these features are NOT"))}
        return doc

    def training_counts(self, manifest: Optional[dict[str, Any]]) -> tuple[list[int], str]:
        """Training class counts for the groups (see :func:`training_class_counts`), once per model."""
        from .reference import training_class_counts

        key = json.dumps([(manifest or {}).get("model"), ((manifest or {}).get("settings") or {}).get("checkpoint")],
                         sort_keys=True, default=str)
        if key not in self._counts:
            self._counts[key] = training_class_counts(self.dataset, self.data_root, self.images.num_classes,
                                                      manifest, fallback=self.images.class_counts,
                                                      classes=self.classes, class_order=self.class_order,
                                                      datasets=self.datasets)
        return self._counts[key]

    def training(self, manifest: Optional[dict[str, Any]], status: StatusFn) -> TrainingReference:
        """The set the samples' model was trained on, with features (cached on disk), loaded once."""
        name, opts, source = training_data_of(manifest, self.dataset, self.data_root)
        key = json.dumps([name, opts.model_dump(mode="json")], sort_keys=True)
        if key not in self._training:
            status(f"loading the training set for memorisation ({source})")
            ds = open_named(self.datasets, name, opts)
            if tuple(ds.images.shape[1:]) != self.chw or ds.num_classes != self.images.num_classes:
                raise CbdmError(f"the training set {name} ({source}) does not match the {self.dataset} reference "
                                "in image shape or classes")
            fkey = reference_key(f"{name}@{data_digest(ds)}", "training-set", self.extractor.cache_key)

            def compute() -> FeatureSet:
                return self.extractor.extract(ds.images, batch_size=self.batch_size, device=self.device)

            feats = cached_features(Path(self.cache_dir) / "features", fkey, compute)
            self._training[key] = TrainingReference(ds.images, feats.features, ds.labels,
                                                    f"{len(ds)} images: {source}")
        return self._training[key]


def training_data_of(manifest: Optional[dict[str, Any]], dataset: str, root: Optional[Path]):
    """``(dataset name, DatasetOptions, description)`` of the training set: from the config of the
    checkpoint the sample manifest names when readable, else the training split of ``dataset``
    with default options (the long-tailed one for an ``-lt`` name)."""
    from ..data.options import DatasetOptions

    ckpt = ((manifest or {}).get("settings") or {}).get("checkpoint")
    if ckpt and Path(ckpt).is_file():
        from ..checkpoint import read_metadata

        try:
            data = json.loads(read_metadata(Path(ckpt)).get("config", "{}")).get("data") or {}
        except (CbdmError, ValueError):
            data = {}
        if data.get("dataset"):
            keys = set(DatasetOptions.model_fields) - {"split", "download"}
            opts = DatasetOptions(**{k: v for k, v in data.items() if k in keys and v is not None}, split="train")
            if root is not None and (opts.root is None or not Path(opts.root).exists()):
                opts = opts.model_copy(update={"root": root})
            return data["dataset"], opts, f"the training data of {ckpt}"
    return dataset, dataset_options(root=root, split="train"), f"{dataset} training split (default options)"


def prepare_reference(options: Any, components: EvalComponents, *, on_status: Optional[StatusFn] = None,
                      ctx: Optional[Any] = None) -> PreparedReference:
    """Load the reference of ``options`` (:class:`EvalOptions`) with its ``components``
    (resolved at the edge: ``build_evaluation.resolve_evaluation``): images, extractor, features
    (under torchrun, ``ctx``: extracted by all ranks, each an index range)."""
    from ..device import resolve_device

    status = on_status or (lambda _m: None)
    device = resolve_device(options.device)
    cache_dir = Path(options.cache_dir).expanduser() if options.cache_dir is not None else default_cache_dir()
    split = resolve_reference_split(options.dataset, options.data_root, options.reference_split)
    folder = None if options.reference_folder is None else Path(options.reference_folder)
    status(f"loading the reference: {folder or f'the {split} split of {options.dataset}'}")
    stats = None
    if options.reference_stats is not None:
        path = Path(options.reference_stats).expanduser()
        stats = FidStats(path, *load_fid_stats(path))
    ref = load_reference(options.dataset, options.data_root, split, folder=folder, classes=options.classes,
                         class_order=options.class_order, image_size=options.image_size,
                         datasets=components.datasets)
    chw = (ref.channels, int(ref.images.shape[-2]), int(ref.images.shape[-1]))
    extractor, info = build_extractor(options, components.extractor)
    check_classifier_fits(extractor, chw, options.dataset)
    status(f"reference features ({len(ref)} images, {info.name})")
    cached = reference_features(extractor, ref, dataset=options.dataset if folder is None else "folder",
                                split=split, cache_dir=cache_dir, batch_size=options.batch_size, device=device,
                                ctx=ctx)
    return PreparedReference(options.dataset, options.data_root, split, ref, extractor, info,
                             cached, device, cache_dir, options.batch_size,
                             ReferenceRadii(cache_dir / "features", cached.cache_key), folder=folder, stats=stats,
                             classes=options.classes, class_order=options.class_order,
                             datasets=components.datasets)
