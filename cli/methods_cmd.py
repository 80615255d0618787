"""``cbdm methods``: every training method with its options, paper and code."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from cbdm_core.methods.options import describe_options
from cbdm_core.registry import get_registry


def method_rows() -> list[dict[str, Any]]:
    """One record per registered method (for the table and ``--json``)."""
    rows = []
    for c in get_registry():
        if c.kind != "method":
            continue
        spec = c.obj
        rows.append({"name": c.name, "plugin": c.plugin, "version": c.version, "description": c.description,
                     "paper": spec.paper, "code": spec.code, "options": describe_options(spec.options_model),
                     "sweepable": list(spec.sweepable)})
    return rows


@click.command("methods")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def methods(as_json: bool) -> None:
    """List training methods (for `cbdm train --method NAME -M KEY=VALUE`); ddpm means none."""
    rows = method_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    console = Console()
    for r in rows:
        console.print(f"[bold]{r['name']}[/bold]  {r['description']}  ({r['plugin']} {r['version']})")
        if r["paper"] or r["code"]:
            console.print(f"  {r['paper']}  {r['code']}".rstrip())
        table = Table(show_edge=False, box=None, padding=(0, 2))
        for col in ("option", "type", "default", "description"):
            table.add_column(col)
        for o in r["options"]:
            table.add_row(o["name"], o["type"], "(required)" if o["required"] else json.dumps(o["default"]),
                          o["description"])
        console.print(table)
    console.print("ddpm  no method: plain class-conditional DDPM training")
