"""Importers for checkpoints made by other code bases (read safely, converted to cbdm run folders)."""

from .diffusers_unet import import_diffusers_unet
from .reference_ddpm import (
    ImportOptions,
    ImportResult,
    ReferenceArch,
    ReferenceCheckpoint,
    convert_state_dict,
    import_reference_checkpoint,
    infer_architecture,
    load_reference_checkpoint,
    resolve_arch,
)

__all__ = [
    "ImportOptions",
    "ImportResult",
    "ReferenceArch",
    "ReferenceCheckpoint",
    "convert_state_dict",
    "import_diffusers_unet",
    "import_reference_checkpoint",
    "infer_architecture",
    "load_reference_checkpoint",
    "resolve_arch",
]
