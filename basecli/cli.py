"""The basecli command line: a thin Typer layer; each command lives in basecli/commands/."""

from __future__ import annotations

import errno
import os
import sys
from typing import Annotated, Optional

import typer

from basecli import __version__
# name -> (module, attribute, summary). Only the command being run is imported and built:
# typer inspects every parameter of every registered command before it dispatches, and the
# command modules import their option tables, so building all of them costs more than
# `basecli tokenize` has in total. The summaries are what `basecli --help` lists
# (tests/test_startup.py checks each against its command's own docstring).
COMMANDS = {
    "tokenize": ("basecli.commands.tokenize", "tokenize", "Show how TEXT becomes tokens: coloured spans, ids and counts."),
    "complete": ("basecli.commands.complete", "complete", "Continue PROMPT with the model, streaming the new text."),
    "resample": ("basecli.commands.resample", "resample", "Sample N continuations of PROMPT at once and show how they differ."),
    "sweep": ("basecli.commands.sweep", "sweep",
                 "Run PROMPT under every combination of the given knobs in one batch, and show a grid."),
    "fewshot": ("basecli.commands.fewshot", "fewshot",
                 "Render a few-shot TEMPLATE with each INPUT, complete, and print only the answers."),
    "chat": ("basecli.commands.chat", "chat",
                 "Chat with a base model through a conversation-shaped prompt."),
    "template": ("basecli.commands.template", "app",
                 "Inspect prompt templates (prompts/*.txt)."),
    "score": ("basecli.commands.score", "score",
                 "Teacher-forced log-probabilities of every token of TEXT, and its size in bits next to gzip, bz2 and xz."),
    "recite": ("basecli.commands.recite", "recite",
                 "Continue the first sentence of REFERENCE greedily for as long as the reference, and measure the verbatim overlap."),
    "info": ("basecli.commands.info", "info",
                 "Architecture, parameter counts by component, provenance (sha256, licence), tokenizer and the code that runs the model."),
    "models": ("basecli.commands.models", "app",
                 "List models; save, list and remove remote server profiles."),
    "loom": ("basecli.commands.loom", "loom",
                 "Weave a tree of continuations in the terminal, or grow and read one in a pipeline."),
    "bench": ("basecli.commands.bench", "bench",
                 "Measure load time, prompt processing, time to first token, decode speed per batch size and peak memory."),
}


def _version(value: bool):
    if value:
        print(f"basecli {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
):
    """A playground for base language models: how text becomes tokens, how a model continues it."""


def build_app(only: str | None = None) -> typer.Typer:
    """The CLI with every command, or with `only` built for real and the others listed by summary."""
    import importlib

    app = typer.Typer(
        name="basecli",
        help="A playground for base language models: tokenize, complete, resample, sweep, few-shot, chat, score.",
        no_args_is_help=True,
        # --install-completion / --show-completion: typer.main has imported the machinery already,
        # so the two options cost a fraction of a millisecond
        add_completion=True,
        # Plain click help: rich help formatting imports rich.markdown and pygments (~0.15 s),
        # most of what `basecli --help` would cost.
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    for name, (module, attribute, summary) in COMMANDS.items():
        if only is not None and name != only:
            app.command(name, help=summary, add_help_option=False)(_listed_only)
            continue
        target = getattr(importlib.import_module(module), attribute)
        if isinstance(target, typer.Typer):
            for info in target.registered_commands:  # `models list | head` ends quietly too
                info.callback = _pipe_safe(info.callback)
            app.add_typer(target, name=name)
        else:
            app.command(name)(_pipe_safe(target))
    return app


def _listed_only():
    """Stands in for a command that is listed in --help but not run."""


def _pipe_safe(fn):
    """A closed stdout pipe inside a command becomes PipeClosed, which main() ends quietly
    (click itself would exit 1 on it)."""
    import functools

    if getattr(fn, "pipe_safe", False):
        return fn

    @functools.wraps(fn)
    def run(*args, **kwargs):
        from basecli.errors import PipeClosed

        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:
            raise PipeClosed() from None

    run.pipe_safe = True
    return run


def __getattr__(name: str):
    if name == "app":  # the whole CLI, for typer's CliRunner in tests
        return build_app()
    raise AttributeError(name)


def _completing() -> list[str] | None:
    """The words after `basecli` when a shell asks for completions (typer's protocol), else None."""
    if not os.environ.get("_BASECLI_COMPLETE"):
        return None
    import shlex

    words = os.environ.get("COMP_WORDS") or os.environ.get("_TYPER_COMPLETE_ARGS", "")
    try:
        return shlex.split(words)[1:]
    except ValueError:  # an open quote in the word being typed
        return words.split()[1:]


def _command_in(argv: list[str]) -> str | None:
    """The command argv names, if it names one: the root has only flags without values (--help, --version)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main() -> None:
    """Entry point: one clear line on stderr for anything the user can fix, never a traceback.

    Exit codes are listed in basecli/errors.py and docs/errors.md.
    """
    from basecli import errors

    # typer >= 0.17 vendors click as typer._click, whose usage errors are not click's classes;
    # older typer uses click itself (not imported otherwise: it costs 40 ms of start-up)
    try:
        from typer._click.exceptions import ClickException
        from typer.exceptions import Abort
    except ImportError:
        from click.exceptions import Abort, ClickException

    errors.take_dropped(), errors.take_interrupted()  # a fresh run (tests run several in one process)
    try:
        _check_arguments(sys.argv[1:])
        # a shell asking for completions names the command in its own variables, not in argv
        typed = _completing()
        app = build_app(only=_command_in(sys.argv[1:] if typed is None else typed) or "")
        # "basecli" however it was started (python -m basecli too): usage lines and completion scripts name it
        code = app(standalone_mode=False, prog_name="basecli")
    except errors.BasecliError as e:
        _say(f"basecli: error: {e}")
        code = e.exit_code
    except ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `basecli`: the help is the answer
            e.show()
        else:
            _say(f"basecli: error: {_click_line(e)}")
        code = e.exit_code
    except (KeyboardInterrupt, Abort):
        code = errors.INTERRUPTED
    except (BrokenPipeError, errors.PipeClosed):
        code = 0
    except Exception as e:  # not an error basecli raised itself
        code = _unexpected(e)
    if errors.take_interrupted() and code in (0, None):  # the records so far were printed
        code = errors.INTERRUPTED
    if code == errors.INTERRUPTED:  # typer turns Ctrl-C into Exit(130); what was printed stays printed
        _say("\nbasecli: interrupted")
    if errors.take_dropped() and code in (0, None):
        code = errors.DROPPED
    if code == 0 or code is None:
        _close_stdout()
        sys.exit(0)
    _close_stdout()
    sys.exit(code if isinstance(code, int) else 1)


def _check_arguments(argv: list[str]) -> None:
    """Every argument must be UTF-8 text (Python keeps bytes it could not decode as lone
    surrogates, which break later, far from here), except the name of a file that exists."""
    from basecli.errors import UsageError

    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as e:
            path = arg[1:] if arg.startswith("@") else arg.partition("=")[2] or arg
            if os.path.exists(path.lstrip("@")):
                continue
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise UsageError(f"the argument {shown!r} is not valid UTF-8 (character {e.start}); "
                             f"use a UTF-8 locale, or put the text in a UTF-8 file and pass @FILE") from None


def _unexpected(e: Exception) -> int:
    """A refused file or memory is said in one line; anything else is a bug, said as one, with
    the traceback only under BASECLI_DEBUG=1."""
    from basecli import errors

    if os.environ.get("BASECLI_DEBUG") not in (None, "", "0"):
        raise e
    if isinstance(e, OSError) and getattr(e, "filename", None) is not None:
        _say(errors.redact(f"basecli: error: {_os_error_line(e)}"))
        return errors.USAGE
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG):
        _say(f"basecli: error: cannot write the output: {e.strerror}")  # a full disk behind `> file`
        return errors.INTERNAL
    if isinstance(e, MemoryError):
        _say("basecli: error: out of memory; try a smaller input, --max-tokens, -N or --batch-size")
        return errors.INTERNAL
    _say(errors.redact(f"basecli: internal error: {_where(e)}. This is a bug in basecli; please report it to "
                       f"{errors.REPORT_TO} (BASECLI_DEBUG=1 shows the traceback)"))
    return errors.INTERNAL


def _os_error_line(e: OSError) -> str:
    from pathlib import Path

    from basecli.config import home

    path = Path(e.filename)
    line = f"cannot use {path}: {e.strerror or e}"
    root = home()
    if path == root or root in path.parents:
        line += f"; BASECLI_HOME ({root}) must be a writable directory: point BASECLI_HOME at one"
    return line


def _click_line(e) -> str:
    """click's usage error as one line, with where to find help (click prints a usage block instead)."""
    ctx = getattr(e, "ctx", None)
    hint = f" (see `{ctx.command_path} -h`)" if ctx is not None else ""
    return " ".join(e.format_message().split()).rstrip(".") + hint


def _where(e: BaseException) -> str:
    """`Type: message in file.py:line` of the innermost frame inside basecli."""
    import traceback

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.startswith(package)] or traceback.extract_tb(e.__traceback__)
    at = f" in {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
    text = " ".join(str(e).split())[:200]
    return f"{type(e).__name__}{': ' + text if text else ''}{at}"


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (BrokenPipeError, OSError):
        pass


def _close_stdout() -> None:
    """A closed pipe (| head) must end quietly, including the flush at exit."""
    try:
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
