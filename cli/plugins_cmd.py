"""``cbdm plugins``: every registered component."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from cbdm_core.registry import KINDS, get_registry


@click.command("plugins")
@click.option("--kind", type=click.Choice(KINDS), help="Only this kind.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(kind, as_json):
    """List registered components: kind, name, providing plugin and version."""
    rows = [c for c in get_registry() if kind is None or c.kind == kind]
    if as_json:
        click.echo(json.dumps([{"kind": c.kind, "name": c.name, "plugin": c.plugin, "version": c.version,
                                "description": c.description} for c in rows], indent=1))
        return
    table = Table(show_edge=False)
    for col in ("kind", "name", "plugin", "version", "description"):
        table.add_column(col)
    for c in rows:
        table.add_row(c.kind, c.name, c.plugin, c.version, c.description)
    Console().print(table)
