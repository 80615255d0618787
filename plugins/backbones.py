"""Built-in denoiser backbones."""

from __future__ import annotations

from cbdm_core.hookspecs import hookimpl
from cbdm_core.interfaces import BackboneSpec
from cbdm_core.nets.unet import UNetOptions, build_unet


@hookimpl
def register_components(register) -> None:
    register("backbone", "unet", BackboneSpec(options_model=UNetOptions, build=build_unet),
             description="DDPM U-Net with class embedding (CBDM's backbone)")
