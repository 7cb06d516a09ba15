"""basecli template check: find the seam traps that silently wreck few-shot prompts."""

from __future__ import annotations

from typing import Annotated, List

import typer

app = typer.Typer(help="Inspect prompt templates (prompts/*.txt).", no_args_is_help=True)


@app.command("check")
def check(
    files: Annotated[List[str], typer.Argument(help="Template files (or shipped names like en_ko).")],
):
    """Report seam problems, each with its line: a space before the answer slot, double spaces, inconsistent delimiters between examples, a missing newline between examples, trailing whitespace.

    Exits 1 when anything is found, so it can guard a commit.

    \b
    Examples:
      basecli template check prompts/*.txt
    """
    import sys

    from basecli.text import templates
    found = 0
    for name in files:
        tpl = templates.load(name)
        findings = templates.check(tpl)
        found += len(findings)
        for f in findings:
            print(f"{name} {f}")
        if not findings:
            print(f"{name}: ok ({len(tpl.variables)} variable{'s' if len(tpl.variables) != 1 else ''}: "
                  f"{', '.join(tpl.variables) or 'none'})", file=sys.stderr)
    if found:
        raise typer.Exit(1)
