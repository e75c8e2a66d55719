"""What every command shares: turning library errors into clean messages and non-zero exits."""

from __future__ import annotations

import functools
from typing import Callable

import click

from fusion_ser.errors import FusionSerError


def option_flags(ctx: click.Context | None, names: tuple[str, ...]) -> list[str]:
    """The command-line flags (e.g. --segment-length) of the command's parameters called `names`."""
    if ctx is None:
        return []
    params = {p.name: p for p in ctx.command.params if isinstance(p, click.Option)}
    return [max(params[n].opts, key=len) for n in names if n in params]


def error_message(e: FusionSerError, ctx: click.Context | None) -> str:
    """The library's message, plus the flags of the options it names (when this command has them)."""
    flags = option_flags(ctx, getattr(e, "options", ()))
    if not flags:
        return str(e)
    return f"{e} (option{'s' if len(flags) > 1 else ''} {', '.join(flags)})"


def handle_errors(func: Callable) -> Callable:
    """Run a command body; a FusionSerError becomes `Error: <message>` and exit code 1, with no traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except FusionSerError as e:
            raise click.ClickException(error_message(e, click.get_current_context(silent=True))) from None

    return wrapper
