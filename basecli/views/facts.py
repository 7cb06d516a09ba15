"""A titled list of label/value rows: a rich table on a terminal, 'label: value' lines in a pipe."""

from __future__ import annotations

import sys
from typing import Iterable


def print_facts(title: str, rows: Iterable[tuple[str, str]]) -> None:
    from basecli.views.render import console, is_tty

    rows = list(rows)
    if not is_tty():
        sys.stdout.write(f"{title}\n" + "".join(f"  {label}: {value}\n" for label, value in rows))
        return
    from rich.table import Table

    table = Table(title=title, title_justify="left", title_style="bold", show_header=False, box=None, padding=(0, 2))
    table.add_column(style="cyan", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(label, value)
    console().print(table)


def grid(title: str, header: list[str], rows: list[list[str]], *, styles: list[str | None] | None = None) -> None:
    """A table with a header: rich on a terminal, tab-separated lines in a pipe."""
    from basecli.views.render import console, is_tty

    if not is_tty():
        sys.stdout.write(f"{title}\n" + "\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
        return
    from rich.table import Table

    table = Table(title=title, title_justify="left", title_style="bold", box=None, padding=(0, 1))
    for i, h in enumerate(header):
        table.add_column(h, justify="right" if i == 0 else "left")
    for r, style in zip(rows, styles or [None] * len(rows)):
        table.add_row(*r, style=style)
    console().print(table)


def pieces(token_bytes: Iterable[bytes]) -> list[str]:
    """Printable text per token: a character split across tokens is shown with the token that completes it."""
    import codecs

    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = [dec.decode(b) for b in token_bytes]
    if out:
        out[-1] += dec.decode(b"", final=True)
    return out
