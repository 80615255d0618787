"""Built-in feature extractors: the FID Inception v3 and a dataset-specific classifier."""

from __future__ import annotations

from cbdm_core.features import build_classifier_extractor, build_inception
from cbdm_core.hookspecs import hookimpl


@hookimpl
def register_components(register) -> None:
    register("feature_extractor", "inception", build_inception,
             description="FID Inception v3 (torch-fidelity); option weights_path or $CBDM_INCEPTION_WEIGHTS")
    register("feature_extractor", "classifier", build_classifier_extractor,
             description="small CNN trained on the dataset; option classifier_path")
