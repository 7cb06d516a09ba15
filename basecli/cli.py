"""The basecli command line: a thin Typer layer; each command lives in basecli/commands/."""

from __future__ import annotations

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
        add_completion=False,
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
            app.add_typer(target, name=name)
        else:
            app.command(name)(_pipe_safe(target))
    return app


def _listed_only():
    """Stands in for a command that is listed in --help but not run."""


def _pipe_safe(fn):
    """A closed stdout pipe inside a command becomes PipeClosed, which main() ends quietly."""
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):
        from basecli.errors import PipeClosed

        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:
            raise PipeClosed() from None

    return run


def __getattr__(name: str):
    if name == "app":  # the whole CLI, for typer's CliRunner in tests
        return build_app()
    raise AttributeError(name)


def _command_in(argv: list[str]) -> str | None:
    """The command argv names, if it names one: the root has only flags without values (--help, --version)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main() -> None:
    """Entry point: one clear line on stderr for anything the user can fix, never a traceback."""
    from basecli.errors import BasecliError, PipeClosed

    # typer >= 0.17 vendors click as typer._click, whose usage errors are not click's classes;
    # older typer uses click itself (not imported otherwise: it costs 40 ms of start-up)
    try:
        from typer._click.exceptions import ClickException
        from typer.exceptions import Abort
    except ImportError:
        from click.exceptions import Abort, ClickException

    usage_errors, aborts = [ClickException], [Abort]
    try:
        app = build_app(only=_command_in(sys.argv[1:]) or "")
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
