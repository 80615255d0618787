"""The ``cbdm`` command line: one Click group; each sub-command lives in its own module.

The sub-command modules are imported only when their command runs: most of them need torch
(seconds to import), which ``cbdm --help`` does not. The group's help page lists the commands
from :data:`COMMANDS` (a test checks that every entry loads the command it names).
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
from typing import Iterator, NamedTuple, Optional

import click

from cbdm_core.errors import CbdmError, shorten

MAX_ERROR_CHARS = 2000  # an Error: line longer than this is cut (hostile values in user files)


class LazyCommand(NamedTuple):
    """Where a sub-command lives, and its one-line help for ``cbdm --help``."""

    module: str
    attr: str
    short_help: str


# Short lines written for the listing (each fits 80 columns); `cbdm COMMAND --help` has the rest.
COMMANDS: dict[str, LazyCommand] = {
    "compare": LazyCommand("cbdm_cli.compare_cmd", "compare",
                           "Train and evaluate every method of a protocol, alike"),
    "eval": LazyCommand("cbdm_cli.eval_cmd", "eval_group", "FID, KID, recall and a per-class report of samples"),
    "export": LazyCommand("cbdm_cli.export_cmd", "export", "Write a run as a diffusers folder (U-Net + pipeline)"),
    "import-checkpoint": LazyCommand("cbdm_cli.import_cmd", "import_checkpoint",
                                     "Convert a pytorch-ddpm .pt or a diffusers folder to a run"),
    "methods": LazyCommand("cbdm_cli.methods_cmd", "methods", "List training methods and their options"),
    "plugins": LazyCommand("cbdm_cli.plugins_cmd", "plugins", "List registered components and their plugins"),
    "presets": LazyCommand("cbdm_cli.presets_cmd", "presets", "List presets, or print one as YAML"),
    "sample": LazyCommand("cbdm_cli.sample_cmd", "sample", "Generate images from a trained run (resumable)"),
    "sweep": LazyCommand("cbdm_cli.sweep_cmd", "sweep_group", "Metric curves over guidance w or a method option"),
    "train": LazyCommand("cbdm_cli.train_cmd", "train", "Train a class-conditional diffusion model"),
    "train-classifier": LazyCommand("cbdm_cli.train_classifier_cmd", "train_classifier",
                                    "Train a noise-aware classifier for classifier guidance"),
}


@contextlib.contextmanager
def _quiet_interrupt() -> Iterator[None]:
    """Ctrl-C while a command's module imports torch exits quietly (see :mod:`cbdm_cli.entry`)."""
    from .entry import _interrupted_while_starting

    try:
        previous = signal.signal(signal.SIGINT, _interrupted_while_starting)
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Group(click.Group):
    """Loads sub-commands on demand; turns :class:`CbdmError` into one line on stderr and exit
    status 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        # An import error here is a bug in cbdm, not a user error: let it raise.
        with _quiet_interrupt():
            command = getattr(importlib.import_module(entry.module), entry.attr)
        self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in COMMANDS:
                rows.append((name, COMMANDS[name].short_help))
            elif not self.commands[name].hidden:
                rows.append((name, self.commands[name].get_short_help_str()))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CbdmError as exc:
            # The cap is a backstop: messages quote values read from user files.
            raise click.ClickException(shorten(str(exc), MAX_ERROR_CHARS)) from None
        except KeyboardInterrupt:
            # Ctrl-C before a command installs its own handling (loading data, building the model).
            click.echo("Error: interrupted; complete files already written are kept", err=True)
            raise SystemExit(130) from None
        except Exception as exc:
            from .plugin_errors import plugin_error_line

            line = plugin_error_line(exc)
            if line is None:  # cbdm's own bug: its traceback is what a report needs
                raise
            raise click.ClickException(line) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cbdm")
def cli() -> None:
    """Class-balancing diffusion models for long-tailed data."""


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one ``warning: ...`` line on stderr, not Python's two lines with a file path."""
    click.echo(f"warning: {message}", err=True)


def main() -> None:
    import warnings

    warnings.showwarning = _warning_line  # the command line's own: a library user keeps Python's
    cli(prog_name="cbdm")


if __name__ == "__main__":
    sys.exit(main())
