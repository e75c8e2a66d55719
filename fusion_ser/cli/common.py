"""What every command shares: turning library errors into clean messages and non-zero exits."""

from __future__ import annotations

import functools
from typing import Callable

import click

from fusion_ser.errors import FusionSerError


def handle_errors(func: Callable) -> Callable:
    """Run a command body; a FusionSerError becomes `Error: <message>` and exit code 1, with no traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except FusionSerError as e:
            raise click.ClickException(str(e)) from None

    return wrapper
