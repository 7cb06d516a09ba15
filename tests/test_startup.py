"""Start-up: `basecli --help` must not pay for torch or transformers (about 2 s of imports)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "tiktoken", "rich.markdown", "pygments")

# Runs the real entry point, then reports which heavy modules it imported. The exit of
# `--help` is a SystemExit, caught so the report still gets written.
PROBE = """
import json, sys
watch = json.loads(sys.argv[2])
sys.argv = ["basecli", *json.loads(sys.argv[1])]
from basecli.cli import main
try:
    main()
except SystemExit:
    pass
heavy = sorted(m for m in watch if m in sys.modules)
print(json.dumps(heavy), file=sys.stderr)
"""


def imported_by(*args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(args)), json.dumps(HEAVY)],
                         capture_output=True, text=True, timeout=60)
    return json.loads(out.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--help"], ["complete", "--help"], ["bench", "--help"], ["loom", "--help"], ["--version"]])
def test_help_imports_no_torch_or_transformers(args):
    assert imported_by(*args) == []


def test_help_lists_every_command_with_its_own_summary():
    """--help lists commands from cli.COMMANDS without importing them; each summary must be the
    first paragraph of the command's own help, so the two cannot drift apart."""
    import importlib
    import inspect

    import typer

    from basecli.cli import COMMANDS
    from conftest import invoke

    listed = invoke("--help").stdout
    for name, (module, attribute, summary) in COMMANDS.items():
        target = getattr(importlib.import_module(module), attribute)
        own = target.info.help if isinstance(target, typer.Typer) else inspect.getdoc(target).split("\n\n")[0]
        assert summary == own, name
        assert f"  {name} " in listed


@pytest.mark.parametrize("args", [["tokenize", "--help"], ["models", "--help"], ["template", "check", "--help"]])
def test_each_command_is_built_alone(args):
    """Running one command imports only its own module, not every command's."""
    probe = PROBE.replace("heavy = sorted(m for m in watch if m in sys.modules)",
                          "heavy = sorted(m for m in sys.modules if m.startswith('basecli.commands.'))")
    out = subprocess.run([sys.executable, "-c", probe, json.dumps(args), "[]"], capture_output=True, text=True, timeout=60)
    assert json.loads(out.stderr.strip().splitlines()[-1]) == [f"basecli.commands.{args[0]}"]


def test_unknown_command_is_a_usage_error():
    from conftest import invoke

    result = invoke("tokenise", "hi")
    assert result.returncode == 2
    assert "No such command 'tokenise'" in result.stderr
