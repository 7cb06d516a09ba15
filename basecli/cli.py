"""The basecli command line: a thin Typer layer; each command lives in basecli/commands/."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from basecli import __version__
from basecli.commands.bench import bench
from basecli.commands.chat import chat
from basecli.commands.complete import complete
from basecli.commands.fewshot import fewshot
from basecli.commands.info import info
from basecli.commands.models import app as models_app
from basecli.commands.recite import recite
from basecli.commands.resample import resample
from basecli.commands.score import score
from basecli.commands.sweep import sweep
from basecli.commands.template import app as template_app
from basecli.commands.tokenize import tokenize

app = typer.Typer(
    name="basecli",
    help="A playground for base language models: tokenize, complete, resample, sweep, few-shot, chat, score.",
    no_args_is_help=True,
    add_completion=False,
    # Plain click help: rich help formatting imports rich.markdown and pygments (~0.15 s),
    # most of what `basecli --help` would cost.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool):
    if value:
        print(f"basecli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
):
    """A playground for base language models: how text becomes tokens, how a model continues it."""


def command(name: str, fn):
    """Register a command; a closed stdout pipe inside it becomes PipeClosed, which main() ends quietly."""
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):
        from basecli.errors import PipeClosed

        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:
            raise PipeClosed() from None

    app.command(name)(run)


command("tokenize", tokenize)
command("complete", complete)
command("resample", resample)
command("sweep", sweep)
command("fewshot", fewshot)
command("chat", chat)
app.add_typer(template_app, name="template")
command("score", score)
command("recite", recite)
command("info", info)
app.add_typer(models_app, name="models")
command("bench", bench)


def main() -> None:
    """Entry point: one clear line on stderr for anything the user can fix, never a traceback."""
    import click

    from basecli.errors import BasecliError, PipeClosed

    # typer >= 0.17 vendors click as typer._click: its usage errors are not click's classes
    usage_errors, aborts = [click.ClickException], [click.exceptions.Abort]
    try:
        from typer._click.exceptions import ClickException as VendoredClickException
        from typer.exceptions import Abort as TyperAbort

        usage_errors.append(VendoredClickException)
        aborts.append(TyperAbort)
    except ImportError:
        pass
    try:
        code = app(standalone_mode=False)
    except BasecliError as e:
        _say(f"basecli: error: {e}")
        code = e.exit_code
    except tuple(usage_errors) as e:
        e.show()
        code = e.exit_code
    except (KeyboardInterrupt, *aborts):
        code = 130
    except (BrokenPipeError, PipeClosed):
        code = 0
    if code == 130:  # typer turns Ctrl-C into Exit(130); what was printed stays printed
        _say("\nbasecli: interrupted")
    if code == 0 or code is None:
        _close_stdout()
        sys.exit(0)
    _close_stdout()
    sys.exit(code if isinstance(code, int) else 1)


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
