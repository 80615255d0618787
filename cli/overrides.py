"""Turn CLI options into configuration overrides."""

from __future__ import annotations

from typing import Any

import yaml

from cbdm_core.errors import CbdmError
from cbdm_core.safe_yaml import load_yaml


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        nxt = node.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            node[key] = nxt
        node = nxt
    node[keys[-1]] = value


def parse_set_option(item: str) -> tuple[str, Any]:
    """``"optim.lr=1e-4"`` -> ``("optim.lr", 0.0001)`` (values parsed as YAML)."""
    ((key, value),) = parse_key_values((item,), "--set").items()
    return key, value


def parse_key_values(items: tuple[str, ...], flag: str) -> dict[str, Any]:
    """``("S_churn=10", "rho=7")`` -> ``{"S_churn": 10, "rho": 7}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise CbdmError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = load_yaml(raw, f"{flag} {key.strip()}") if raw else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out
