"""Terminal view of `basecli models list`: tables on a terminal, tab-separated lines in a pipe."""

from __future__ import annotations

import sys


def show_lists(aliases: list[dict], cached: list[dict], saved: list[dict]) -> None:
    from basecli.views.render import console, is_tty

    key = lambda p: f"${p['api_key_env']} ({'set' if p['api_key_set'] else 'not set'})" if p["api_key_env"] else "-"
    sections = [
        ("local aliases", ["alias", "model"], [[a["alias"], a["source"]] for a in aliases]),
        ("cached on this machine", ["model", "MB", "where"], [[c["name"], f"{c['size_mb']:g}", c["where"]] for c in cached]),
        ("remote profiles (use as --model NAME)", ["name", "base url", "model", "kind", "API key"],
         [[p["name"], p["base_url"], p["model"] or "(server's first)", p["kind"], key(p)] for p in saved]),
    ]
    if not is_tty():
        for title, _, rows in sections:
            sys.stdout.write(f"# {title}\n")
            for row in rows:
                sys.stdout.write("\t".join(row) + "\n")
        return
    from rich.table import Table

    for title, columns, rows in sections:
        table = Table(title=title, title_justify="left", title_style="bold")
        for c in columns:
            table.add_column(c)
        for row in rows:
            table.add_row(*row)
        if not rows:
            table.add_row(*(["(none)"] + [""] * (len(columns) - 1)))
        console().print(table)
