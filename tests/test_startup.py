"""Start-up cost of the command line: `cbdm --help` loads no torch, listing commands load no
timm/torchvision (module-presence checks in a fresh interpreter, not timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import click

from cbdm_cli.main import COMMANDS, cli

_PROBE = """
import json, sys
from cbdm_cli.main import main
for args in {commands!r}:
    sys.argv = ["cbdm", *args]
    try:
        main()
    except SystemExit:
        pass
heavy = ["torch", "timm", "torchvision", "torch_fidelity", "matplotlib", "scipy", "sklearn"]
sys.stderr.write("LOADED " + json.dumps([m for m in heavy if m in sys.modules]) + "\\n")
"""


def _loaded_after(*commands: list[str]) -> list[str]:
    """Heavy modules present after running each ``cbdm ARGS`` of ``commands`` in one fresh interpreter."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = _PROBE.format(commands=list(commands))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("LOADED ")]
    assert line, proc.stderr
    return json.loads(line[-1][len("LOADED "):])


def test_help_loads_no_torch():
    assert _loaded_after(["--help"]) == []


def test_listing_commands_load_no_timm_or_torchvision():
    loaded = _loaded_after(["methods"], ["plugins"])
    for name in ("timm", "torchvision", "torch_fidelity", "matplotlib", "scipy", "sklearn"):
        assert name not in loaded, f"`cbdm methods` / `cbdm plugins` imported {name}"


def test_every_listed_command_loads_under_its_name():
    ctx = click.Context(cli)
    for name, entry in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name, entry
        assert len(f"  {name:17}  {entry.short_help}") <= 80
