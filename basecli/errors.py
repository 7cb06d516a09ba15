"""Errors the CLI turns into one line on stderr and an exit code, never a traceback."""


class BasecliError(Exception):
    """Something the user can fix; `exit_code` 2 means bad usage or input."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(BasecliError):
    """Bad flags, bad input, unknown model: exit 2."""

    exit_code = 2


class PipeClosed(Exception):
    """stdout's reader went away (`| head`): stop quietly. Not an OSError, so click leaves it to us."""
