"""Where a prompt comes from: the argument itself, '-' for stdin, '@path' for a file.

Everything is read in pieces with a bound (BASECLI_MAX_INPUT_MB), and checked as it arrives:
`@/dev/zero` is refused at its first NUL byte, not after it has filled the memory.
"""

from __future__ import annotations

import codecs
import sys
from pathlib import Path

from basecli.errors import UsageError

CHUNK = 1 << 20


def read_text(arg: str | None, *, what: str = "prompt") -> str:
    """Return the text an argument stands for.

    '-' reads stdin, '@path' reads a file, anything else is the text itself.
    '@@x' is the literal text '@x' for a prompt that really starts with '@'.
    """
    if arg is None:
        if sys.stdin is not None and not sys.stdin.isatty():
            return read_stream(sys.stdin.buffer, "stdin")
        raise UsageError(f"no {what} given: pass it as an argument, '-' for stdin or @FILE")
    if arg == "-":
        return read_stream(sys.stdin.buffer, "stdin")
    if arg.startswith("@@"):
        return check_text(arg[1:], what)
    if arg.startswith("@") and len(arg) > 1:
        return read_file(arg[1:])
    return check_text(arg, what)


def check_text(text: str, what: str = "text") -> str:
    """`text` from the command line, if it is valid UTF-8 (Python keeps undecodable bytes as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError(f"the {what} is not valid UTF-8 (character {e.start}); "
                         f"set a UTF-8 locale or pass it as a UTF-8 file with @FILE") from None
    if "\x00" in text:
        raise UsageError(f"the {what} contains a NUL character; give text without it")
    return text


def read_file(path: str | Path) -> str:
    p = Path(path).expanduser()
    try:
        with open(p, "rb") as f:
            return read_stream(f, str(p))
    except FileNotFoundError:
        raise UsageError(f"file not found: {p}") from None
    except IsADirectoryError:
        raise UsageError(f"{p} is a directory, not a text file") from None
    except OSError as e:
        raise UsageError(f"cannot read {p}: {e.strerror or e}") from None


def max_bytes() -> int:
    from basecli.config import env_number

    return int(env_number("BASECLI_MAX_INPUT_MB") * (1 << 20))


def read_stream(f, source: str, limit: int | None = None) -> str:
    """UTF-8 text from a binary stream, read in pieces: refused at the first NUL byte, invalid
    byte or byte past `limit` (default BASECLI_MAX_INPUT_MB), so nothing unbounded is held."""
    limit = max_bytes() if limit is None else limit
    decoder = codecs.getincrementaldecoder("utf-8")()
    parts, size = [], 0
    while True:
        data = f.read(CHUNK)
        if not data:
            break
        if b"\x00" in data:
            raise UsageError(f"{source} looks like a binary file (it contains NUL bytes at byte {size + data.index(0)}); "
                             f"give a UTF-8 text file")
        try:
            parts.append(decoder.decode(data))
        except UnicodeDecodeError as e:
            raise UsageError(f"{source} is not valid UTF-8 (byte {size + e.start}: {data[e.start:e.start + 1]!r}); "
                             f"convert it, e.g. with iconv -t utf-8") from None
        size += len(data)
        if size > limit:
            raise UsageError(f"{source} is larger than {limit / (1 << 20):g} MiB, the most basecli reads as text; "
                             f"give a part of it (e.g. head -c), or raise BASECLI_MAX_INPUT_MB")
    try:
        parts.append(decoder.decode(b"", final=True))
    except UnicodeDecodeError:
        raise UsageError(f"{source} is not valid UTF-8 (it ends inside a character); convert it, e.g. with iconv -t utf-8") from None
    return "".join(parts)


def read_lines(f, source: str = "stdin"):
    """Lines of UTF-8 text from a binary stream, each yielded as it arrives (a conversation piped in
    line by line is answered line by line), each checked and bounded like read_stream."""
    limit = max_bytes()
    n = 0
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        n += 1
        if len(line) > limit:
            raise UsageError(f"{source} line {n} is longer than {limit / (1 << 20):g} MiB; raise BASECLI_MAX_INPUT_MB to allow it")
        yield read_stream(_Once(line), f"{source} line {n}", limit)


class _Once:
    """One bytes value read as a stream."""

    def __init__(self, data: bytes):
        self.data = data

    def read(self, _n: int) -> bytes:
        data, self.data = self.data, b""
        return data
