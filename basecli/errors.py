"""Errors the CLI turns into one line on stderr and an exit code, never a traceback.

Exit codes (docs/errors.md): 0 ok, 1 an internal bug (or a server/model failure that is not the
user's input), 2 bad usage or input, 3 a server stream that stopped early (its partial output
was kept), 130 interrupted (what was produced so far was printed).
"""

OK, INTERNAL, USAGE, DROPPED, INTERRUPTED = 0, 1, 2, 3, 130
REPORT_TO = "the basecli issue tracker, with the command you ran"


class BasecliError(Exception):
    """Something the user can fix; `exit_code` 2 means bad usage or input."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(redact(message))
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(BasecliError):
    """Bad flags, bad input, unknown model: exit 2."""

    exit_code = 2


class PipeClosed(Exception):
    """stdout's reader went away (`| head`): stop quietly. Not an OSError, so click leaves it to us."""


# --- secrets: every line built from text a server sent passes redact() -------------------------

_secrets: set[str] = set()


def secret(value: str | None) -> None:
    """Remember a credential (an API key) so that no message or output ever shows it."""
    if value and len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    for s in _secrets:
        if s in text:
            text = text.replace(s, "***")
    return text


# --- outcomes that are not errors but that scripts must be able to tell ------------------------

_dropped: list[str] = []


def stream_dropped(why: str) -> None:
    """A server stream stopped early; the command keeps what arrived and main() exits DROPPED."""
    _dropped.append(why)


def take_dropped() -> bool:
    was = bool(_dropped)
    _dropped.clear()
    return was


_interrupted: list[bool] = []


def interrupted() -> None:
    """Ctrl-C arrived while events were gathered: the command prints what it has (unfinished rows
    with finish_reason "interrupted") and main() then exits INTERRUPTED."""
    _interrupted.append(True)


def was_interrupted() -> bool:
    return bool(_interrupted)


def take_interrupted() -> bool:
    was = bool(_interrupted)
    _interrupted.clear()
    return was
