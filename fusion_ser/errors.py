"""The error every user-facing failure derives from; the CLI turns it into a clear message and exit code 1."""

from __future__ import annotations

from typing import Sequence


class FusionSerError(ValueError):
    """Bad input or state that the user can fix; the message says what and where, and what to do.

    The message speaks in library terms; `options` names the parameters at fault (e.g. ("hop",)), so that the CLI
    can add the flags a person types for them.
    """

    def __init__(self, message: str = "", *, options: Sequence[str] = ()):
        super().__init__(message)
        self.options = tuple(options)
