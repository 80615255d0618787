"""The transformer backbones: ``vit`` (DiT-style) and ``genvit`` (the CBDM paper's Diffusion-ViT).

Both are built from timm blocks.
"""

from __future__ import annotations

from cbdm_core.hookspecs import hookimpl
from cbdm_core.interfaces import BackboneSpec
from cbdm_core.nets.genvit import GenViTOptions, build_genvit
from cbdm_core.nets.vit import ViTOptions, build_vit


@hookimpl
def register_components(register) -> None:
    register("backbone", "vit", BackboneSpec(options_model=ViTOptions, build=build_vit,
                                          # transformers diverge at the small U-Net's 2e-3; the
                                          # Table 5 presets train them at 2e-4
                                          recommended_lr=2e-4),
             description="diffusion transformer with adaLN-Zero conditioning (timm blocks); sizes tiny/small/base")
    register("backbone", "genvit", BackboneSpec(options_model=GenViTOptions, build=build_genvit,
                                             recommended_lr=2e-4),
             description="GenViT (Diffusion-ViT, Yang et al. 2022; CBDM's Table 5 ViT) with a label "
                         "embedding; CIFAR configuration by default (timm blocks)")
