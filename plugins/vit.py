"""The diffusion transformer backbone ``vit`` (DiT-style, built from timm blocks)."""

from __future__ import annotations

from cbdm_core.hookspecs import hookimpl
from cbdm_core.interfaces import BackboneSpec
from cbdm_core.nets.vit import ViTOptions, build_vit


@hookimpl
def register_components(register) -> None:
    register("backbone", "vit", BackboneSpec(options_model=ViTOptions, build=build_vit,
                                          # transformers diverge at the small U-Net's 2e-3; the
                                          # Table 5 presets train them at 2e-4
                                          recommended_lr=2e-4),
             description="diffusion transformer with adaLN-Zero conditioning (timm blocks); sizes tiny/small/base")
