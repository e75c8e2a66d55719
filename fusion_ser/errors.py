"""The error every user-facing failure derives from; the CLI turns it into a clear message and exit code 1."""


class FusionSerError(ValueError):
    """Bad input or state that the user can fix; the message says what and where, and what to do."""
