"""Plugin hook specifications.

A plugin is any module (or object) exposing ``register_components`` marked
with :data:`hookimpl`, and installed under the entry-point group ``cbdm``::

    # my_plugin.py
    from cbdm_core import hookimpl  # the same object as cbdm_core.hookspecs.hookimpl

    @hookimpl
    def register_components(register):
        register("label_distribution", "tail-heavy", my_factory,
                 description="favour tail classes")

One hook for all kinds: ``register(kind, name, obj, description=...)``. What ``obj``
is depends on the kind; see :mod:`cbdm_core.registry` and docs/plugins.md.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "cbdm"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class CbdmSpec:
    @hookspec
    def register_components(self, register) -> None:  # pragma: no cover - spec only
        """Register components by calling ``register(kind, name, obj, description="")``."""
