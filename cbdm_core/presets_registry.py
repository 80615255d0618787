"""Named configuration presets shipped with the package (``cbdm_core/presets/*.yaml``).

A preset may start from another with ``extends: NAME``; its own keys are merged on
top (mappings merged key by key, lists replaced; a different ``model.backbone``
replaces the whole ``model`` section, since backbone options do not carry over).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from .config import deep_update
from .errors import CbdmError


def _folder():
    return resources.files("cbdm_core") / "presets"


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in _folder().iterdir() if p.name.endswith(".yaml"))


def preset_description(name: str) -> str:
    """The preset file's leading comment, joined into one line."""
    lines = []
    for line in (_folder() / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    return " ".join(lines)


def load_preset(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    names = preset_names()
    if name not in names:
        raise CbdmError(f"unknown preset {name!r}; available: {', '.join(names)}")
    if name in _seen:
        raise CbdmError(f"preset {name!r} extends itself (via {' -> '.join(_seen)})")
    data = yaml.safe_load((_folder() / f"{name}.yaml").read_text()) or {}
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    base = load_preset(base_name, _seen + (name,))
    model = data.get("model")
    if isinstance(model, dict) and model.get("backbone") not in (None, base.get("model", {}).get("backbone")):
        base = {k: v for k, v in base.items() if k != "model"}
    return deep_update(base, data)
