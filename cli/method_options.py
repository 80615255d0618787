"""``--method`` / ``-M`` into ``objective.methods``: the CLI names no method itself.

The only method names written here are the documented CBDM shorthands (``--tau``,
``--gamma``, ``--y-dist``, ``--set-size``), which predate the method seam.
"""

from __future__ import annotations

from typing import Any, Optional

from cbdm_core.errors import CbdmError, ConfigError

from .overrides import parse_key_values

NO_METHOD = "ddpm"  # plain conditional DDPM: no method at all
# Shorthand CLI option -> (method, option); kept from before methods were plugins.
SHORTHANDS: dict[str, tuple[str, str]] = {
    "tau": ("cbdm", "tau"), "gamma": ("cbdm", "gamma"), "y_dist": ("cbdm", "y_dist"), "set_size": ("cbdm", "set_size"),
}


def _registry():
    from cbdm_core.registry import get_registry

    return get_registry()


def method_spec(name: str):
    """The registered :class:`MethodSpec` of ``name``, or a one-line error listing the choices."""
    reg = _registry()
    if name not in reg.names("method"):
        raise ConfigError(f"unknown method {name!r}; available: {', '.join([NO_METHOD] + reg.names('method'))}")
    return reg.get("method", name).obj


def split_methods(values: tuple[str, ...]) -> Optional[list[str]]:
    """``("cbdm", "t2h")`` or ``("cbdm+t2h",)`` -> ``["cbdm", "t2h"]``; ``("ddpm",)`` -> ``[]``."""
    if not values:
        return None
    names = [n.strip() for v in values for n in v.split("+") if n.strip()]
    if NO_METHOD in names:
        if len(names) > 1:
            raise ConfigError(f"--method {NO_METHOD} means no method; it cannot be combined with others")
        return []
    for name in names:
        method_spec(name)
    if len(set(names)) != len(names):
        raise ConfigError(f"--method lists a method twice: {'+'.join(names)}")
    return names


def _entries(data: dict[str, Any]) -> list[dict[str, Any]]:
    objective = data.setdefault("objective", {})
    if "methods" not in objective:
        objective["methods"] = [{"name": "cbdm", "options": {}}]  # the config default (ObjectiveConfig)
    return objective["methods"]


def _entry(entries: list[dict[str, Any]], name: str) -> Optional[dict[str, Any]]:
    for e in entries:
        if e.get("name") == name:
            return e
    return None


def check_option(method: str, key: str) -> None:
    """``key`` must be an option of ``method`` (one line naming the choices otherwise)."""
    fields = list(method_spec(method).options_model.model_fields)
    if key not in fields:
        raise ConfigError(f"method {method!r} has no option {key!r}; options: {', '.join(fields) or '(none)'}")


def apply_methods(data: dict[str, Any], methods: tuple[str, ...], method_opts: tuple[str, ...],
                  shorthands: dict[str, Any]) -> None:
    """Write the CLI's method choice and options into ``data`` (a config mapping), in place.

    Args:
        methods: ``--method`` values (repeatable, or ``a+b``); empty keeps the configured methods.
        method_opts: ``-M KEY=VALUE`` items; KEY is ``opt`` with one method, ``method.opt`` otherwise.
        shorthands: the values of the shorthand options (None where not given).
    """
    chosen = split_methods(methods)
    entries = _entries(data)
    if chosen is not None:
        # A method named again keeps the options the config gave it.
        data["objective"]["methods"] = entries = [
            {"name": n, "options": dict((_entry(entries, n) or {}).get("options") or {})} for n in chosen]
    for flag, value in shorthands.items():
        if value is None:
            continue
        method, key = SHORTHANDS[flag]
        entry = _entry(entries, method)
        if entry is None:
            if chosen is not None:
                raise ConfigError(f"--{flag.replace('_', '-')} is an option of method {method}, "
                                  f"which --method does not select")
            entry = {"name": method, "options": {}}
            entries.append(entry)
        entry.setdefault("options", {})[key] = value
    for key, value in parse_key_values(method_opts, "-M/--method-option").items():
        names = [e["name"] for e in entries]
        method, dot, opt = key.partition(".")
        if not dot:
            if len(names) != 1:
                raise CbdmError(f"-M {key}=...: with {len(names)} methods ({', '.join(names) or 'none'}) "
                                "write -M METHOD.OPTION=VALUE")
            method, opt = names[0], key
        if method not in names:
            raise CbdmError(f"-M {key}=...: method {method!r} is not selected (selected: {', '.join(names) or 'none'})")
        check_option(method, opt)
        _entry(entries, method).setdefault("options", {})[opt] = value
