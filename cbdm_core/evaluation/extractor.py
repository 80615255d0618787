"""The feature extractor an evaluation uses (Inception, a dataset classifier or a plugin) and
what it says about comparability; shared by the engine and the prepared reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from ..errors import CbdmError

if TYPE_CHECKING:
    from .engine import EvalOptions


@dataclass
class ExtractorInfo:
    """Which network produced the features, and whether its numbers match published ones."""

    name: str
    cache_key: str
    comparable: bool
    note: str
    file: Optional[str] = None

    @property
    def label(self) -> str:
        if self.name == "inception" and not self.comparable:
            return "inception (unofficial weights: NOT comparable)"
        if self.name == "classifier":
            return f"classifier ({self.cache_key})"
        return self.name


def build_extractor(options: EvalOptions, factory: Any) -> tuple[Any, ExtractorInfo]:
    """The feature extractor of ``options`` made by ``factory`` (the registered factory of
    ``options.extractor``, resolved at the edge: ``EvalComponents.extractor``) and a description of it."""
    from ..features.inception import OFFICIAL_SHA256_PREFIX, resolve_weights_path

    if options.extractor == "classifier":
        if options.classifier is None:
            raise CbdmError("--extractor classifier needs --classifier PATH (train one with "
                            f"`cbdm eval train-classifier --dataset {options.dataset}`)")
        extractor = factory(classifier_path=str(options.classifier))
        info = ExtractorInfo("classifier", extractor.cache_key, False,
                             f"features of the dataset-specific classifier {options.classifier}: compare only "
                             f"with numbers from the same classifier ({extractor.cache_key}), never with "
                             "published Inception FID/IS/KID", str(options.classifier))
    elif options.extractor == "inception":
        extractor = factory(weights_path=None if options.inception_weights is None else str(options.inception_weights))
        path = resolve_weights_path(options.inception_weights)
        official = extractor.cache_key.endswith(OFFICIAL_SHA256_PREFIX)
        note = ("standard FID Inception v3 (TensorFlow 2015 weights): comparable to published numbers "
                "at equal sample counts and reference sets" if official else
                f"Inception weights {path} are NOT the official FID weights: these numbers are NOT "
                "comparable to published FID/IS/KID and must not be reported as such")
        info = ExtractorInfo("inception", extractor.cache_key, official, note, None if path is None else str(path))
    else:
        extractor = factory()
        info = ExtractorInfo(options.extractor, extractor.cache_key, False,
                             f"plugin feature extractor {options.extractor!r}: not the published protocol")
    return extractor, info


def check_classifier_fits(extractor: Any, chw: tuple[int, int, int], dataset: str) -> None:
    """A clear error when a dataset classifier was trained on images of another shape."""
    opts = getattr(getattr(extractor, "model", None), "options", None)
    if opts is None:
        return
    if (opts.in_channels, opts.image_size, opts.image_size) != chw:
        raise CbdmError(f"classifier {extractor.path} takes {opts.in_channels}x{opts.image_size}x{opts.image_size} "
                        f"images but the {dataset} reference images are {chw[0]}x{chw[1]}x{chw[2]} (CxHxW); "
                        f"train one with `cbdm eval train-classifier --dataset {dataset}"
                        + (f" --image-size {chw[1]}`" if chw[1] == chw[2] else "`"))
