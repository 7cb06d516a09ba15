"""Run basecli's real entry point in this process: the same exit codes and stdout/stderr split as a
subprocess, without paying for a fresh interpreter and torch import per call."""

from __future__ import annotations

import sys


def cli(capsys, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    import io

    from basecli.cli import main

    old_argv, old_stdin = sys.argv, sys.stdin
    sys.argv = ["basecli", *args]
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode()))
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv, sys.stdin = old_argv, old_stdin
    out = capsys.readouterr()
    return code, out.out, out.err
