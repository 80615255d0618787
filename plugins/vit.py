"""The diffusion transformer backbone ``vit`` (DiT-style, built from timm blocks)."""

from __future__ import annotations

from cbdm_core.hookspecs import hookimpl
from cbdm_core.interfaces import BackboneSpec
from cbdm_core.nets.vit import ViTOptions, build_vit


@hookimpl
def register_components(register) -> None:
    register("backbone", "vit", BackboneSpec(options_model=ViTOptions, build=build_vit),
             description="diffusion transformer with adaLN-Zero conditioning (timm blocks); sizes tiny/small/base")
