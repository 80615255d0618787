"""The one YAML reader for user input: config files, protocols, ``--set``/``-M``/``-S`` values.

YAML aliases share one parsed object, so a few lines (``b: [*a, *a, ...]`` nested a few
levels, a "billion laughs") load cheaply but expand to billions of values the moment
anything walks them (validation, JSON for a checkpoint's metadata): an alias bomb in a
free-form field (``preview.sampler_options``) reached 5 GB and a Rust panic. Here the
document's size *with every alias expanded* is counted on the composed node graph (each
node once, memoised) before any Python object is built, and a recursive alias is refused.
Anchors and aliases within the bound keep working.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import ConfigError

# Expanded nodes (scalars, lists, mappings) a user document may hold: a large protocol or
# config has a few hundred; shipped files stay far below this.
MAX_NODES = 100_000


class _TooLarge(Exception):
    pass


class _Recursive(Exception):
    pass


def expanded_size(node: yaml.Node, limit: int = MAX_NODES) -> int:
    """Nodes in ``node`` with every alias expanded; raises ``_TooLarge`` past ``limit`` and
    ``_Recursive`` for a node that contains itself."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _Recursive
        active.add(key)
        total = 1
        if isinstance(n, yaml.SequenceNode):
            total += sum(size(child) for child in n.value)
        elif isinstance(n, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in n.value)
        active.discard(key)
        if total > limit:
            raise _TooLarge
        sizes[key] = total
        return total

    return size(node)


class BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that checks :func:`expanded_size` before constructing objects."""

    def construct_document(self, node: yaml.Node) -> Any:
        try:
            expanded_size(node)
        except _TooLarge:
            raise ConfigError(f"YAML document expands to more than {MAX_NODES} values through its aliases "
                              "(*name); write the values out") from None
        except _Recursive:
            raise ConfigError("YAML document holds a recursive alias (a value that contains itself)") from None
        return super().construct_document(node)


def load_yaml(text: str, where: str = "YAML") -> Any:
    """The object ``text`` describes (safe tags only), bounded as above.

    Raises :class:`ConfigError` (``where: ...``) for an alias bomb or a recursive alias, and
    ``yaml.YAMLError`` for a syntax error (callers word that themselves).
    """
    try:
        return yaml.load(text, Loader=BoundedSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except RecursionError:  # nesting deeper than Python's stack, e.g. [[[[...]]]] 100k deep
        raise ConfigError(f"{where}: YAML nested too deeply") from None
