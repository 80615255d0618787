"""A Click group whose first argument is either a sub-command or the argument of a hidden
default command: ``cbdm eval SAMPLES`` next to ``cbdm eval train-classifier``."""

from __future__ import annotations

import click

DEFAULT_CMD = "__default__"


class DefaultContext(click.Context):
    """Usage lines of the hidden command read like the group's (``cbdm eval [OPTIONS] ...``)."""

    @property
    def command_path(self) -> str:
        return self.parent.command_path if self.parent is not None else (self.info_name or "")


class DefaultCommand(click.Command):
    context_class = DefaultContext


class DefaultGroup(click.Group):
    """Routes a first argument that is not a sub-command to :data:`DEFAULT_CMD`.

    Set ``default_usage`` (e.g. ``"SAMPLES --dataset NAME [OPTIONS]"``) for the help page,
    which shows the default command's options followed by the sub-commands.
    """

    default_usage = "[ARGS]..."

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [DEFAULT_CMD, *args]
        return super().parse_args(ctx, args)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        default = self.commands[DEFAULT_CMD]
        formatter.write_usage(ctx.command_path, self.default_usage)
        formatter.write_usage(ctx.command_path, "COMMAND [ARGS]...", prefix="   or: ")
        self.format_help_text(ctx, formatter)
        default.format_options(DefaultContext(default, info_name=DEFAULT_CMD, parent=ctx), formatter)
        self.format_commands(ctx, formatter)
