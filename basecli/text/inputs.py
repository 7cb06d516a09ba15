"""Where a prompt comes from: the argument itself, '-' for stdin, '@path' for a file."""

from __future__ import annotations

import sys
from pathlib import Path

from basecli.errors import UsageError


def read_text(arg: str | None, *, what: str = "prompt") -> str:
    """Return the text an argument stands for.

    '-' reads stdin, '@path' reads a file, anything else is the text itself.
    '@@x' is the literal text '@x' for a prompt that really starts with '@'.
    """
    if arg is None:
        if sys.stdin is not None and not sys.stdin.isatty():
            return _decode(sys.stdin.buffer.read(), "stdin")
        raise UsageError(f"no {what} given: pass it as an argument, '-' for stdin or @FILE")
    if arg == "-":
        return _decode(sys.stdin.buffer.read(), "stdin")
    if arg.startswith("@@"):
        return arg[1:]
    if arg.startswith("@") and len(arg) > 1:
        return read_file(arg[1:])
    return arg


def read_file(path: str | Path) -> str:
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"file not found: {p}") from None
    except IsADirectoryError:
        raise UsageError(f"{p} is a directory, not a text file") from None
    except OSError as e:
        raise UsageError(f"cannot read {p}: {e.strerror}") from None
    return _decode(data, str(p))


def _decode(data: bytes, source: str) -> str:
    if b"\x00" in data[:8192]:
        raise UsageError(f"{source} looks like a binary file (it contains NUL bytes); give a UTF-8 text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(
            f"{source} is not valid UTF-8 (byte {e.start}: {data[e.start:e.start + 1]!r}); convert it, e.g. with iconv -t utf-8"
        ) from None
