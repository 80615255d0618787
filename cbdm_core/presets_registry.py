"""Named configuration presets shipped with the package (``cbdm_core/presets/*.yaml``)."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from .errors import CbdmError


def preset_names() -> list[str]:
    folder = resources.files("cbdm_core") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    names = preset_names()
    if name not in names:
        raise CbdmError(f"unknown preset {name!r}; available: {', '.join(names)}")
    text = (resources.files("cbdm_core") / "presets" / f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}
