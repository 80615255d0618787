"""The ``cbdm`` command line: one Click group; each sub-command lives in its own module."""

from __future__ import annotations

import importlib
import sys

import click

from cbdm_core.errors import CbdmError

# (module, attribute) of each sub-command; a module that fails to import is a bug, not a user error.
_COMMANDS = [
    ("cbdm_cli.train_cmd", "train"),
    ("cbdm_cli.sample_cmd", "sample"),
    ("cbdm_cli.eval_cmd", "eval_group"),
    ("cbdm_cli.plugins_cmd", "plugins"),
    ("cbdm_cli.methods_cmd", "methods"),
    ("cbdm_cli.import_cmd", "import_checkpoint"),
    ("cbdm_cli.presets_cmd", "presets"),
    ("cbdm_cli.sweep_cmd", "sweep_group"),
    ("cbdm_cli.compare_cmd", "compare"),
]


class _Group(click.Group):
    """Turns :class:`CbdmError` into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CbdmError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            # Ctrl-C before a command installs its own handling (loading data, building the model).
            click.echo("Error: interrupted; complete files already written are kept", err=True)
            raise SystemExit(130) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cbdm")
def cli() -> None:
    """Class-balancing diffusion models for long-tailed data."""


for _module, _attr in _COMMANDS:
    try:
        _mod = importlib.import_module(_module)
    except ModuleNotFoundError as _exc:  # sub-command not built yet
        if _exc.name != _module:
            raise
        continue
    cli.add_command(getattr(_mod, _attr))


def main() -> None:
    cli(prog_name="cbdm")


if __name__ == "__main__":
    sys.exit(main())
