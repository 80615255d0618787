"""Built-in augmentations components: ``(p: float) -> Augmentation``."""

from __future__ import annotations

from cbdm_core.data.augment import DiffAugment, NoAugment, NonLeakingAugment, RandomFlip
from cbdm_core.hookspecs import hookimpl


@hookimpl
def register_components(register) -> None:
    register("augmentation", "none", NoAugment, description="no augmentation")
    register("augmentation", "flip", RandomFlip, description="horizontal flip with probability 0.5 (p ignored)")
    register("augmentation", "diffaug", DiffAugment,
             description="DiffAugment: colour, translation 1/8, cutout 1/2, each with probability p")
    register("augmentation", "ada", NonLeakingAugment,
             description="EDM non-leaking: flip, rot90, translation, scaling with probability p; 9-dim cond")
