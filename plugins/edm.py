"""Built-in edm components."""

from __future__ import annotations

from cbdm_core.hookspecs import hookimpl


@hookimpl
def register_components(register) -> None:
    pass
