"""An exception raised inside a third-party plugin's code, told in one line that names the plugin.

A plugin's factory, options check, sampler or guidance may raise a plain ``ValueError``
where cbdm's own code raises :class:`~cbdm_core.errors.CbdmError`. Without this the user saw
a traceback through cbdm's internals and could not tell whose code failed. An exception
whose traceback passes through a module of a third-party ``cbdm`` entry-point package becomes
``Error: plugin DIST raised TYPE: message (in MODULE.FUNCTION; CBDM_TRACEBACK=1 shows the
traceback)``; any other exception (a bug in cbdm) keeps its traceback.
"""

from __future__ import annotations

import os
from importlib import metadata as importlib_metadata
from types import TracebackType
from typing import Optional

from cbdm_core.errors import shorten
from cbdm_core.hookspecs import PROJECT_NAME

TRACEBACK_ENV = "CBDM_TRACEBACK"


def third_party_packages() -> dict[str, str]:
    """``{top-level package: "distribution version"}`` of every ``cbdm`` entry point not shipped with cbdm."""
    found: dict[str, str] = {}
    for ep in importlib_metadata.entry_points(group=PROJECT_NAME):
        dist = getattr(ep, "dist", None)
        name = dist.metadata["name"] if dist is not None else "(unknown)"
        if name == PROJECT_NAME:
            continue
        package = ep.value.split(":")[0].split(".")[0]
        found.setdefault(package, f"{name} {dist.version}" if dist is not None else name)
    return found


def _innermost_plugin_frame(tb: Optional[TracebackType], packages: dict[str, str]) -> Optional[tuple[str, str]]:
    """``(plugin, "module.function")`` of the innermost traceback frame in a plugin's package."""
    hit = None
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        plugin = packages.get(module.split(".")[0])
        if plugin is not None:
            hit = (plugin, f"{module}.{tb.tb_frame.f_code.co_name}")
        tb = tb.tb_next
    return hit


def plugin_error_line(exc: BaseException, packages: Optional[dict[str, str]] = None) -> Optional[str]:
    """The one-line message for ``exc`` when a third-party plugin's code raised it, else None
    (also None with ``CBDM_TRACEBACK=1``: the traceback is wanted)."""
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        return None
    if not isinstance(exc, Exception):
        return None
    hit = _innermost_plugin_frame(exc.__traceback__, third_party_packages() if packages is None else packages)
    if hit is None:
        return None
    plugin, where = hit
    text = str(exc).strip().splitlines()
    message = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return shorten(f"plugin {plugin} raised {message} (in {where}; {TRACEBACK_ENV}=1 shows the traceback)", 2000)
