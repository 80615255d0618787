"""``cbdm presets``: the shipped experiment presets."""

from __future__ import annotations

import click
import yaml
from rich.console import Console
from rich.table import Table

from cbdm_core.presets_registry import load_preset, preset_description, preset_names


@click.command("presets")
@click.argument("name", required=False)
def presets(name):
    """List presets, or print one resolved preset as YAML."""
    if name:
        click.echo(yaml.safe_dump(load_preset(name), sort_keys=False), nl=False)
        return
    table = Table(show_edge=False)
    table.add_column("preset")
    table.add_column("description")
    for n in preset_names():
        table.add_row(n, preset_description(n))
    Console().print(table)
