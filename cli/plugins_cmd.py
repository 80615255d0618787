"""``cbdm plugins``: every registered component."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from cbdm_core.methods.options import describe_options
from cbdm_core.registry import KINDS, get_registry


def component_options(obj) -> list[dict]:
    """The options a component takes (its ``options_model``'s fields), ``[]`` when it has none."""
    model = getattr(obj, "options_model", None)
    return describe_options(model) if model is not None else []


def _options_text(options: list[dict]) -> str:
    def value(o: dict) -> str:
        return "(required)" if o["required"] else json.dumps(o["default"], default=str)

    return ", ".join(f"{o['name']}={value(o)}" for o in options)


@click.command("plugins")
@click.option("--kind", type=click.Choice(KINDS), help="Only this kind.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(kind, as_json):
    """List registered components: kind, name, options (with defaults), providing plugin and version."""
    registry = get_registry()
    rows = [c for c in registry if kind is None or c.kind == kind]
    if as_json:
        click.echo(json.dumps([{"kind": c.kind, "name": c.name, "plugin": c.plugin, "version": c.version,
                                "description": c.description, "options": component_options(c.obj)}
                               for c in rows], indent=1, default=str))
        return
    # One small table per kind, name and plugin never wrapped, the description folded:
    # readable at 80 columns, where one wide five-column table was not.
    console = Console()
    for k in dict.fromkeys(c.kind for c in rows):
        table = Table(title=k, title_justify="left", title_style="bold", show_header=False, box=None,
                      padding=(0, 1), expand=False)
        table.add_column("name", no_wrap=True)
        table.add_column("description", overflow="fold", ratio=1)
        table.add_column("plugin", no_wrap=True, style="dim")
        for c in rows:
            if c.kind == k:
                options = _options_text(component_options(c.obj))
                text = f"{c.description}\noptions: {options}".strip() if options else c.description
                table.add_row(c.name, text, f"{c.plugin} {c.version}".strip())
        console.print(table)
    if registry.problems:  # broken or colliding plugins, left out of the registry
        table = Table(title="left out (broken plugins)", title_justify="left", title_style="bold red",
                      show_header=False, box=None, padding=(0, 1), expand=False)
        table.add_column("plugin", no_wrap=True)
        table.add_column("error", overflow="fold", ratio=1)
        for problem in registry.problems:
            table.add_row(f"{problem.plugin} {problem.version}", problem.error)
        console.print(table)
